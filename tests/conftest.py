"""Shared pytest fixtures: the real-data path and tiny MMRec folders."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from mentor_jax import compilation_cache

# Real datasets live beside the repo: <repo>/../shared/data (read-only).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'


@pytest.fixture(scope='session', autouse=True)
def session_compile_cache(tmp_path_factory) -> Path:
  """One persistent compilation cache for the session and its subprocesses
  (they inherit the environment): a program compiled once, by any test, is
  loaded afterwards, and no test writes into the user's own cache."""
  path = tmp_path_factory.mktemp('xla_cache')
  before = os.environ.get(compilation_cache.ENV)
  os.environ[compilation_cache.ENV] = str(path)
  yield path
  if before is None:
    os.environ.pop(compilation_cache.ENV, None)
  else:
    os.environ[compilation_cache.ENV] = before


@pytest.fixture(scope='module', autouse=True)
def release_compiled_programs():
  """Frees each test module's compiled programs after it.

  XLA:CPU keeps every executable's code mapped (about 1,700 memory maps
  for a tiny MENTOR epoch's two programs, measured), and JAX's caches keep
  every executable alive: the whole suite in one process would reach the
  kernel's vm.max_map_count (65,530), where LLVM can map no more and the
  process aborts. A later module that needs a program again loads it from
  the session's compilation cache.
  """
  yield
  import jax  # pylint: disable=g-import-not-at-top
  jax.clear_caches()
  if os.environ.get('MENTOR_TEST_MAPS'):  # A probe of the peak, on request.
    with open('/proc/self/maps') as f:
      print(f' [{sum(1 for _ in f)} maps]', end='')


@pytest.fixture(scope='session')
def shared_data() -> Path:
  """Path of the real datasets; skips the test if they are absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f'real datasets not found at {SHARED_DATA}')
  return SHARED_DATA


def write_mmrec_folder(
    folder: Path, rows: Sequence[Sequence[object]] | None = None, *,
    name: str | None = None,
    columns: Sequence[str] = ('userID', 'itemID', 'x_label'),
    feat_v: np.ndarray | None = None,
    feat_t: np.ndarray | None = None) -> Path:
  """Writes an MMRec folder: `<name>.inter` (TSV with header) and features.

  Args:
    folder: created if needed.
    rows: table rows, written with str(); anything goes, so tests can plant
      bad values. None writes no .inter file.
    name: file stem; defaults to the folder name (what convert expects).
    columns: header.
    feat_v: written as image_feat.npy if given.
    feat_t: written as text_feat.npy if given.

  Returns:
    The folder.
  """
  folder.mkdir(parents=True, exist_ok=True)
  name = name or folder.name
  if rows is not None:
    lines = ['\t'.join(columns)] + ['\t'.join(map(str, r)) for r in rows]
    (folder / f'{name}.inter').write_text('\n'.join(lines) + '\n')
  if feat_v is not None:
    np.save(folder / 'image_feat.npy', feat_v)
  if feat_t is not None:
    np.save(folder / 'text_feat.npy', feat_t)
  return folder


@pytest.fixture
def mmrec_folder(tmp_path: Path) -> Callable[..., Path]:
  """Factory: mmrec_folder(rows, name='toy', **kw) -> folder in tmp_path."""

  def make(rows=None, name: str = 'toy', **kw) -> Path:
    return write_mmrec_folder(tmp_path / name, rows, **kw)

  return make


@pytest.fixture(scope='session')
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
  """The seeded `tiny` synthetic preset (60 users, 40 items) as a .npz."""
  from data_prep import convert, synthetic  # Only tests using it pay.
  folder = tmp_path_factory.mktemp('tiny') / 'tiny'
  synthetic.generate(synthetic.PRESETS['tiny'], folder, seed=0)
  out = folder.parent / 'tiny.npz'
  convert.convert(folder, out)
  return out


@pytest.fixture
def data_root(tiny_dataset: Path, tmp_path: Path) -> Path:
  """A MENTOR_DATA_ROOT holding tiny's data where configs/tiny.py says."""
  root = tmp_path / 'data_root'
  (root / 'data').mkdir(parents=True)
  shutil.copy(tiny_dataset, root / 'data' / 'tiny.npz')
  return root


def prepare_tiktok_slice(shared: Path, folder: Path, n_users: int) -> Path:
  """The first `n_users` users of the real TikTok data, as a prepared .npz.

  The acoustic features fill the second modality slot (see the dataset's
  README); feature rows are cut to the slice's items.
  """
  import pandas as pd  # pylint: disable=g-import-not-at-top
  from data_prep import convert  # pylint: disable=g-import-not-at-top
  src = shared / 'tiktok'
  df = pd.read_csv(src / 'tiktok.inter', sep='\t')
  df = df[df.userID < n_users]
  n_items = int(df.itemID.max()) + 1
  folder.mkdir(parents=True, exist_ok=True)
  df.to_csv(folder / 'tiktok.inter', sep='\t', index=False)
  for name in ('image_feat.npy', 'audio_feat.npy'):
    np.save(folder / name, np.load(src / name)[:n_items])
  out = folder / 'tiktok.npz'
  convert.convert(folder, out, name='tiktok', v_feat='image_feat.npy',
                  t_feat='audio_feat.npy', knn_k=10)
  return out


def baseline_config(model: str, npz: Path):
  """configs/baseline.py's `<model>,tiktok` settings on the .npz `npz`."""
  from configs import baseline  # pylint: disable=g-import-not-at-top
  config = baseline.get_config(f'{model},tiktok')
  config.data_npz = str(npz)
  config.data_source = ''
  return config


class BuiltBaseline(NamedTuple):
  dataset: Any
  config: Any
  family: Any
  hp: Any
  model: Any
  data: Any


def build_baseline(name: str, npz: Path, **overrides) -> BuiltBaseline:
  """Baseline `name` on `npz` with config `overrides`, as the trainer builds
  it (the default sparse kernel of this backend)."""
  # pylint: disable=g-import-not-at-top
  from mentor_jax import data as data_lib
  from mentor_jax import registry
  from mentor_jax import epoch as epoch_lib
  dataset = data_lib.load_dataset(npz)
  config = baseline_config(name, npz)
  for key, value in overrides.items():
    config[key] = value
  family = registry.get(name)
  hp = epoch_lib.make_hparams(family, config, dataset)
  model = family.create_model(config, dataset)
  data = data_lib.to_device(dataset, config.knn_k)
  return BuiltBaseline(dataset, config, family, hp, model, data)


def import_bench_reference(name: str):
  """Imports bench.reference.<name>, undoing its JAX_PLATFORMS default
  (the reference modules set it to cpu for their torch processes)."""
  import importlib  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  saved = os.environ.get('JAX_PLATFORMS')
  repo = str(Path(__file__).resolve().parents[1])
  if repo not in sys.path:
    sys.path.insert(0, repo)
  try:
    return importlib.import_module(f'bench.reference.{name}')
  finally:
    if saved is None:
      os.environ.pop('JAX_PLATFORMS', None)
    else:
      os.environ['JAX_PLATFORMS'] = saved
