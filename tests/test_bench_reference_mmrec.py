"""The MMRec timing harness (bench/reference/mmrec_*.py, table3.py).

What runs without torch: the mapping of our baseline settings to MMRec's
config keys (a drift between mentor_jax/configs/baseline.py and the cells
the worker passes to MMRec must fail here), the worker's data layout and
argument parsing, the scipy shim, and the driver's table from fake results.
What needs the MMRec checkout (its yaml grids) or a torch interpreter (a
real MMRec run) is skipped with the reason when absent; point MMREC_SRC and
REF_PYTHON at them (defaults: ../ref/MMRec, ../refvenv/bin/python).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.sparse as sp

import conftest
from mentor_jax import registry
from mentor_jax.configs import baseline

REPO = pathlib.Path(__file__).resolve().parents[1]
MMREC_SRC = pathlib.Path(os.environ.get('MMREC_SRC')
                         or REPO.parent / 'ref' / 'MMRec')
REF_PYTHON = pathlib.Path(os.environ.get('REF_PYTHON')
                          or REPO.parent / 'refvenv' / 'bin' / 'python')


settings = conftest.import_bench_reference('mmrec_settings')
table3 = conftest.import_bench_reference('table3')
worker = conftest.import_bench_reference('mmrec_worker')
shims = conftest.import_bench_reference('torch_shims')
fit_loop = conftest.import_bench_reference('fit_loop')

DATASETS = ('baby', 'clothing')


# ------------------------------------------------ settings: ours == MMRec's


@pytest.mark.parametrize('dataset', DATASETS)
@pytest.mark.parametrize('model', settings.MODELS)
def test_worker_cells_equal_our_baseline_settings(model, dataset):
  config = baseline.get_config(f'{model},{dataset}')
  assert settings.from_ours(model, config) == settings.CELLS[model]
  assert table3.settings_problems(model, config) == []


@pytest.mark.parametrize('model', settings.MODELS)
def test_every_key_our_family_reads_is_mapped_or_explained(model):
  family_keys = set(registry.get(model).config_spec)
  assert settings.unmapped_keys(model, family_keys) == []
  # And nothing is mapped that our family does not read (a stale entry).
  config = baseline.get_config(f'{model},baby')
  for key in settings.mapped_keys(model):
    assert key in config, (model, key)


def test_models_match_our_registry_and_mmrec_names():
  assert set(settings.MODELS) <= set(registry.names())
  assert settings.MMREC_MODEL['mfbpr'] == 'BPR'
  assert set(table3.DEFAULT_MODELS) == set(settings.MODELS)


def test_a_changed_setting_is_reported_by_key():
  config = baseline.get_config('vbpr,baby')
  config.reg_weight = 1e-2
  problems = table3.settings_problems('vbpr', config)
  assert len(problems) == 1 and problems[0].startswith('reg_weight:')
  assert '0.01' in problems[0] and '0.001' in problems[0]

  config = baseline.get_config('mmgcn,baby')
  config.eval_embeddings = 'recompute'
  assert [p.split(':')[0] for p in table3.settings_problems('mmgcn', config)
          ] == ['eval_embeddings']

  config = baseline.get_config('lgmrec,baby')
  config.score_gumbel = False
  assert [p.split(':')[0] for p in table3.settings_problems('lgmrec', config)
          ] == ['score_gumbel']


def test_lattice_layers_become_weight_size():
  config = baseline.get_config('lattice,baby')
  config.n_ui_layers = 3
  got = settings.from_ours('lattice', config)
  assert got['weight_size'] == [64, 64, 64]
  assert 'n_ui_layers' not in got  # MMRec reads len(weight_size)


def test_an_unmapped_family_key_and_a_missing_key_are_named():
  keys = set(registry.get('freedom').config_spec) | {'new_knob'}
  assert settings.unmapped_keys('freedom', keys) == ['new_knob']
  config = dict(baseline.get_config('bm3,baby'))
  del config['cl_weight']
  with pytest.raises(KeyError, match='cl_weight'):
    settings.from_ours('bm3', config)
  with pytest.raises(ValueError, match='expected one of'):
    settings.from_ours('mentor', config)


def test_differences_lists_both_directions():
  cell = dict(settings.CELLS['mfbpr'])
  cell['extra'] = 1
  del cell['seed']
  diffs = settings.differences('mfbpr', cell)
  assert any(d.startswith('extra:') for d in diffs)
  assert any(d.startswith('seed:') for d in diffs)
  assert len(diffs) == 2


def _yaml_value(v):
  # PyYAML reads MMRec's `1e-04` (no dot) as a string; MMRec's own loader
  # reads it as a float.
  if isinstance(v, list):
    return [_yaml_value(x) for x in v]
  if isinstance(v, str):
    try:
      return float(v)
    except ValueError:
      return v
  return v


@pytest.mark.parametrize('model', settings.MODELS)
def test_each_cell_is_a_cell_of_mmrecs_own_yaml(model):
  """Every value is MMRec's, or one point of a grid MMRec searches."""
  yaml = pytest.importorskip('yaml')
  configs = MMREC_SRC / 'src' / 'configs'
  if not (configs / 'overall.yaml').is_file():
    pytest.skip(f'no MMRec checkout at {MMREC_SRC} (set MMREC_SRC)')
  mmrec = settings.MMREC_MODEL[model]
  overall = yaml.safe_load((configs / 'overall.yaml').read_text())
  own = yaml.safe_load((configs / 'model' / f'{mmrec}.yaml').read_text())
  grid = set(overall['hyper_parameters']) | set(own['hyper_parameters'])
  merged = {k: _yaml_value(v) for k, v in dict(overall, **own).items()}
  for key, value in settings.CELLS[model].items():
    assert key in merged, f'{mmrec} has no setting {key!r}'
    if key in grid:
      assert value in merged[key], (key, value, merged[key])
    elif isinstance(merged[key], list) and not isinstance(value, list):
      assert merged[key] == [value], (key, value, merged[key])
    else:
      assert value == merged[key], (key, value, merged[key])


# ------------------------------------------------------ the worker, no torch


def _folder(tmp_path, name='toy', header='userID\titemID\tx_label',
            features=('image_feat.npy', 'text_feat.npy')):
  folder = tmp_path / name
  folder.mkdir(parents=True)
  (folder / f'{name}.inter').write_text(f'{header}\n0\t1\t0\n')
  for f in features:
    np.save(folder / f, np.ones((2, 3), np.float32))
  return folder


def test_layout_links_the_files_under_mmrec_names(tmp_path):
  folder = _folder(tmp_path, features=('image_feat.npy', 'audio_feat.npy'))
  scratch = tmp_path / 'scratch'
  scratch.mkdir()
  root = worker.layout(folder, 'toy', 'image_feat.npy', 'audio_feat.npy',
                       need_features=True, scratch=str(scratch))
  assert root.parent == scratch
  got = {p.name: p.resolve() for p in (root / 'toy').iterdir()}
  assert got == {'toy.inter': (folder / 'toy.inter').resolve(),
                 'image_feat.npy': (folder / 'image_feat.npy').resolve(),
                 'text_feat.npy': (folder / 'audio_feat.npy').resolve()}
  assert sorted(p.name for p in folder.iterdir()) == [
      'audio_feat.npy', 'image_feat.npy', 'toy.inter']  # nothing added


def test_layout_names_what_is_missing(tmp_path):
  folder = _folder(tmp_path, features=('image_feat.npy',))
  with pytest.raises(worker.UsageError, match='text_feat.npy not found'):
    worker.layout(folder, 'toy', 'image_feat.npy', 'text_feat.npy',
                  need_features=True, scratch=str(tmp_path))
  # ID-only models (BPR, LightGCN) do not read features.
  root = worker.layout(folder, 'toy', 'image_feat.npy', 'text_feat.npy',
                       need_features=False, scratch=str(tmp_path))
  assert sorted(p.name for p in (root / 'toy').iterdir()) == [
      'image_feat.npy', 'toy.inter']
  with pytest.raises(worker.UsageError, match=r'other\.inter not found'):
    worker.layout(folder, 'other', 'a', 'b', need_features=False,
                  scratch=str(tmp_path))
  bad = _folder(tmp_path / 'b', header='user\titemID\tx_label')
  with pytest.raises(worker.UsageError, match=r"lacks \['userID'\]"):
    worker.layout(bad, 'toy', 'image_feat.npy', 'text_feat.npy',
                  need_features=True, scratch=str(tmp_path))


def test_parse_sets():
  assert worker.parse_sets(['reg_weight=1e-2', 'cf_model=mf',
                            'topk=[10, 20]']) == {
                                'reg_weight': 0.01, 'cf_model': 'mf',
                                'topk': [10, 20]}
  with pytest.raises(worker.UsageError, match='KEY=VALUE'):
    worker.parse_sets(['reg_weight'])


def test_dok_update_shim_builds_the_same_matrix_as_coo():
  """MMRec's get_norm_adj_mat fill, checked against a direct COO build."""
  shims.restore_dok_update()
  rng = np.random.default_rng(0)
  n_users, n_items = 7, 5
  pairs = {(int(u), int(i)) for u, i in zip(rng.integers(0, n_users, 20),
                                            rng.integers(0, n_items, 20))}
  rows = np.array([u for u, _ in sorted(pairs)])
  cols = np.array([i for _, i in sorted(pairs)])
  n = n_users + n_items
  a = sp.dok_matrix((n, n), dtype=np.float32)
  data = dict(zip(zip(rows, cols + n_users), [1] * len(rows)))
  data.update(dict(zip(zip(cols + n_users, rows), [1] * len(rows))))
  a._update(data)  # pylint: disable=protected-access
  want = sp.coo_matrix((np.ones(2 * len(rows)),
                        (np.r_[rows, cols + n_users],
                         np.r_[cols + n_users, rows])), shape=(n, n))
  np.testing.assert_array_equal(a.toarray(), want.toarray())
  np.testing.assert_array_equal(np.asarray((a > 0).sum(axis=1)).ravel(),
                                np.asarray(want.sum(axis=1)).ravel())


def test_an_epoch_is_skipped_only_if_it_would_end_past_80_percent():
  started = time.perf_counter()
  assert fit_loop.epoch_overruns(0, 5, 30.0, started, 0) is None  # no limit
  assert fit_loop.epoch_overruns(0, 5, None, started, 100) is None
  assert fit_loop.epoch_overruns(1, 5, 50.0, started, 100) is None
  note = fit_loop.epoch_overruns(2, 5, 85.0, started, 100)
  assert note == ('2 of 5 epochs: the next (~85 s) would end past 80% of '
                  '--time-limit 100 s')
  # Time already spent counts: 10 s ago + a 75 s epoch > 80 s.
  assert fit_loop.epoch_overruns(3, 5, 75.0, started - 10.0, 100) is not None


def test_stub_unused_modules_only_replaces_missing_ones():
  name = 'mentor_jax_test_absent_pkg'
  stubs = {name: ['sub'], f'{name}.sub': ['fn'], 'json': ['dumps']}
  try:
    assert shims.stub_unused_modules(stubs) == [name]
    assert sys.modules[f'{name}.sub'].fn(1, x=2) is None
    assert sys.modules[name].sub is sys.modules[f'{name}.sub']
    assert sys.modules['json'] is json  # installed: left alone
  finally:
    sys.modules.pop(name, None)
    sys.modules.pop(f'{name}.sub', None)


# ------------------------------------------------------- the driver's table


def _ours(epoch, peak, eval_s=0.5):
  return {'epoch_s': {'n': 3, 'median': epoch}, 'peak_rss_gib': peak,
          'eval_s': {'n': 3, 'median': eval_s}}


def test_table_renders_from_fake_results():
  entries = {
      'vbpr': {'ours': _ours(2.0, 1.25),
               'mmrec': {'epoch_s': {'n': 2, 'median': 50.0},
                         'peak_rss_gib': 3.5,
                         'eval_s': {'n': 1, 'median': 4.0}}},
      'lattice': {'ours': _ours(4.0, 4.5),
                  'mmrec': {'epoch_s': {'n': 0}, 'epoch_s_extrapolated': 600.0,
                            'peak_rss_gib': 12.0,
                            'eval_s': {'n': 1, 'median': 900.0}}},
      'mmgcn': {'ours': _ours(3.0, 2.0),
                'mmrec': {'error': 'Traceback ...\nRuntimeError: DefaultCPU'
                                   'Allocator: can\'t allocate memory',
                          'returncode': 1, 'peak_rss_gib': 9.0}},
  }
  rows = [table3.table_row(m, e) for m, e in entries.items()]
  assert rows[0]['ratio'] == 25.0
  assert rows[1]['ref_extrapolated'] and rows[1]['ratio'] == 150.0
  assert rows[2]['ratio'] is None and rows[2]['ref_peak_rss_gib'] is None
  text = table3.render_markdown(rows, '# header', our_limit_gib=4.0)
  lines = text.splitlines()
  assert lines[0] == '# header'
  assert ('| model | reference | ours s/epoch | reference s/epoch | ratio '
          '| ours peak RSS | reference peak RSS |') in lines
  assert '| VBPR | MMRec | 2 | 50 | 25x | 1.25 GiB | 3.50 GiB |' in lines
  assert ('| LATTICE | MMRec | 4 | ~600 | 150x | 4.50 GiB (over) '
          '| 12.00 GiB |') in lines
  assert ('| MMGCN | MMRec | 3 | failed: out of memory | n/a | 2.00 GiB '
          '|  |') in lines
  assert any(line.startswith('~ epoch EXTRAPOLATED') for line in lines)
  assert '(over): our peak RSS is above 4 GiB.' in lines
  assert '| VBPR | 0.5 | 4 |' in lines and '| LATTICE | 0.5 | 900 |' in lines
  other = table3.failure({'error': 'Traceback\nValueError: bad thing\n',
                          'returncode': 1})
  assert other == 'failed: ValueError: bad thing'
  # Whole epochs win over an extrapolation when a run has both.
  both = {'epoch_s': {'n': 2, 'median': 7.0}, 'epoch_s_extrapolated': 9.0}
  assert table3.epoch_seconds(both) == (7.0, False)


def test_official_rows_read_their_own_entry_and_extrapolate_per_step():
  # MMSSL, step-timed on both sides: 3 timed epochs of 10 batches each
  # (medians 20 s) of an epoch of 117 batches; eval = valid + test.
  official = table3.official_shape({
      'peak_rss_gib': 2.5, 'batches_timed': 10, 'n_batch': 117,
      'metrics_per_epoch': [
          {'train_s': t, 'valid_s': 3.0, 'test_s': 4.0}
          for t in (19.0, 20.0, 25.0)]})
  assert official['epoch_s'] == {'n': 0}
  assert official['epoch_s_extrapolated'] == pytest.approx(20.0 / 10 * 117)
  assert official['eval_s']['median'] == 7.0
  ours = {'epoch_s': {'n': 0}, 'epoch_s_extrapolated': 58.5,
          'peak_rss_gib': 1.5, 'eval_s': {'n': 1, 'median': 1.0}}
  row = table3.table_row('mmssl', {'ours': ours, 'official': official})
  assert row['reference'] == 'official'
  assert row['ours_extrapolated'] and row['ref_extrapolated']
  assert row['ratio'] == pytest.approx(234.0 / 58.5)
  # DiffMM: whole epochs, its official test pass only.
  diffmm = table3.official_shape({'metrics_per_epoch': [
      {'train_s': 300.0, 'test_s': 10.0}, {'train_s': 310.0, 'test_s': 12.0}]})
  assert diffmm['epoch_s']['median'] == 305.0 and diffmm['epoch_s']['n'] == 2
  assert 'epoch_s_extrapolated' not in diffmm
  assert diffmm['eval_s']['median'] == 11.0
  text = table3.render_markdown(
      [row, table3.table_row('diffmm', {'ours': _ours(100.0, 3.0),
                                         'official': diffmm})], '# h')
  assert '| MMSSL | official | ~58.5 | ~234 | 4x | 1.50 GiB | 2.50 GiB |' in (
      text.splitlines())
  assert '| DiffMM | official | 100 | 305 | 3.05x | 3.00 GiB | n/a |' in (
      text.splitlines())


def test_driver_refuses_to_overwrite(tmp_path):
  stem = tmp_path / 'table3_x'
  folder = _folder(tmp_path, name='x')
  npz = tmp_path / 'x.npz'
  npz.write_bytes(b'')
  (tmp_path / 'table3_x.md').write_text('mine\n')
  proc = subprocess.run(
      [sys.executable, str(REPO / 'bench' / 'reference' / 'table3.py'),
       '--mmrec-src', str(tmp_path), '--folder', str(folder), '--npz',
       str(npz), '--out', str(stem), '--models', 'vbpr'],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode != 0
  assert 'table3_x.md exists' in proc.stderr
  assert (tmp_path / 'table3_x.md').read_text() == 'mine\n'
  assert not (tmp_path / 'table3_x.json').exists()


# ---------------------------------------------- a real MMRec run (torch)


def _torch_ready() -> str | None:
  if not (MMREC_SRC / 'src' / 'common' / 'trainer.py').is_file():
    return f'no MMRec checkout at {MMREC_SRC} (set MMREC_SRC)'
  if not REF_PYTHON.is_file():
    return f'no torch interpreter at {REF_PYTHON} (set REF_PYTHON)'
  probe = subprocess.run([str(REF_PYTHON), '-c', 'import torch, '
                          'torch_geometric, yaml, pandas, scipy'],
                         capture_output=True, text=True, check=False)
  if probe.returncode:
    return f'{REF_PYTHON} lacks torch/torch_geometric/pyyaml/pandas/scipy'
  return None


def test_mmrec_vbpr_runs_two_epochs_with_metrics(tmp_path):
  reason = _torch_ready()
  if reason:
    pytest.skip(reason)
  from data_prep import synthetic  # pylint: disable=g-import-not-at-top
  # Small, but with more items than MMRec's largest top-k (50).
  shape = synthetic.Shape(n_users=120, n_items=60, n_inter=1200, dim_v=32,
                          dim_t=16)
  folder = tmp_path / 'small'
  synthetic.generate(shape, folder, seed=0)
  before = sorted(p.name for p in folder.iterdir())
  scratch = tmp_path / 'scratch'
  scratch.mkdir()
  proc = subprocess.run(
      [str(REF_PYTHON), str(REPO / 'bench' / 'reference' / 'mmrec_worker.py'),
       '--mmrec-src', str(MMREC_SRC), '--model', 'vbpr', '--folder',
       str(folder), '--epochs', '2', '--log-metrics', '--eval-reps', '1',
       '--scratch', str(scratch)],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  line = [ln for ln in proc.stdout.splitlines()
          if ln.startswith('BENCH_RESULT ')][-1]
  r = json.loads(line[len('BENCH_RESULT '):])
  assert (r['n_users'], r['n_items']) == (shape.n_users, shape.n_items)
  assert r['mmrec_model'] == 'VBPR'
  assert r['settings'] == settings.CELLS['vbpr']
  assert len(r['epoch_times_s']) == 2 and min(r['epoch_times_s']) > 0
  assert [e['epoch'] for e in r['metrics_per_epoch']] == [0, 1]
  for e in r['metrics_per_epoch']:
    for split in ('valid', 'test'):
      m = e[split]
      assert 0.0 <= m['recall@10'] <= m['recall@20'] <= 1.0
      assert 0.0 <= m['ndcg@10'] <= 1.0
  assert r['ru_maxrss_gib'] > 0
  # Nothing left behind: the scratch root is gone, the folder unchanged.
  assert list(scratch.iterdir()) == []
  assert sorted(p.name for p in folder.iterdir()) == before
