"""The epoch's programs (epoch.py) and the compilation cache around them.

* segments cover the steps of an epoch once, in order, about SEGMENT_S
  seconds each;
* every family's two programs lower to the same text in any process (a
  set iterated in hash order would change the program, and with it JAX's
  persistent-cache key, at every start);
* a second start loads both programs from the persistent cache and trains
  the same bits (compilation_cache.py); where the cache lives.
(That any split of an epoch into segments gives the same bits is in
test_progress.py.)
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from mentor_jax import compilation_cache
from mentor_jax import epoch as epoch_lib
from mentor_jax import registry
from mentor_jax import rundirs

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('n_steps', [2, 7, 49, 50, 51, 59, 1000])
@pytest.mark.parametrize('step_s', [0.0, 0.5, 3.3, 40.0])
def test_segments_cover_the_epoch_once_in_order(n_steps, step_s):
  bounds = epoch_lib.segments(1, n_steps, step_s)  # After the timed step 0.
  assert bounds[0][0] == 1 and bounds[-1][1] == n_steps
  assert all(a < b for a, b in bounds)
  assert all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:]))
  assert len(bounds) <= epoch_lib.SEGMENTS
  sizes = [b - a for a, b in bounds]
  assert max(sizes) - min(sizes) <= 1
  # About SEGMENT_S seconds each: at most that (unless capped by
  # SEGMENTS), and more than half of it.
  want = max(1, math.ceil(epoch_lib.SEGMENT_S / max(step_s, 1e-9)))
  if len(bounds) < epoch_lib.SEGMENTS:
    assert max(sizes) <= want
  if len(bounds) > 1:
    assert min(sizes) >= want // 2
  assert epoch_lib.segments(n_steps, n_steps, step_s) == []


_LOWER = '''
import hashlib, json, sys
from configs import tiny
from mentor_jax import data as data_lib, epoch as epoch_lib, registry
import jax, jax.numpy as jnp
out = {}
for family in registry.FAMILIES:
  config = tiny.get_config(family.name)
  config.data_npz = sys.argv[1]
  if family.name == 'lattice':
    config.knn_k = 5
  s = epoch_lib.setup(config, data_lib.load_dataset(config.data_npz))
  statics = dict(graphdef=s.graphdef, family=s.family, hp=s.hp)
  begin = epoch_lib.begin_program.lower(s.state, s.rest, s.data, **statics)
  epoch = begin.out_info
  bound = jax.ShapeDtypeStruct((), jnp.int32)
  steps = epoch_lib.steps_program.lower(epoch, s.rest, s.data, bound, bound,
                                        **statics)
  out[family.name] = [hashlib.sha256(x.as_text().encode()).hexdigest()
                      for x in (begin, steps)]
print('LOWERED ' + json.dumps(out))
'''


def test_every_family_lowers_to_the_same_program_in_any_process(
    tiny_dataset):
  procs = []
  for seed in ('1', '2'):  # Two processes at once: their imports overlap.
    env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(REPO))
    procs.append(subprocess.Popen(
        [sys.executable, '-c', _LOWER, str(tiny_dataset)], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  found = []
  for proc in procs:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    line = next(l for l in out.splitlines() if l.startswith('LOWERED '))
    found.append(json.loads(line.removeprefix('LOWERED ')))
  assert set(found[0]) == {f.name for f in registry.FAMILIES}
  different = [m for m in found[0] if found[0][m] != found[1][m]]
  assert not different, different


def _train(workdir, npz, cache):
  env = dict(os.environ, **{compilation_cache.ENV: str(cache)})
  done = subprocess.run(
      [sys.executable, '-m', 'mentor_jax.train', '--config',
       'configs/tiny.py:lightgcn', f'--workdir={workdir}',
       f'--config.data_npz={npz}', '--config.epochs=2'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return next(l for l in done.stderr.splitlines() if 'compiled  in' in l)


def test_a_second_start_loads_the_programs_from_the_cache(tiny_dataset,
                                                           tmp_path):
  cache = tmp_path / 'cache'
  first = _train(tmp_path / 'a', tiny_dataset, cache)
  second = _train(tmp_path / 'b', tiny_dataset, cache)
  assert 'not in the compilation cache yet' in first, first
  assert 'from the compilation cache' in second, second
  assert any(cache.glob('jit_*-cache'))
  strip = lambda log: [{k: v for k, v in r.items() if 'time' not in k}
                       for r in log]
  a = strip(rundirs.read_metrics(tmp_path / 'a'))
  b = strip(rundirs.read_metrics(tmp_path / 'b'))
  assert len(a) == 2 and a == b


def test_where_the_cache_lives(tmp_path, monkeypatch):
  monkeypatch.delenv(compilation_cache.ENV, raising=False)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  before = jax.config.jax_compilation_cache_dir
  try:
    jax.config.update('jax_compilation_cache_dir', None)
    assert compilation_cache.resolve('auto') == (
        tmp_path / 'xdg' / 'mentor_jax' / 'xla')
    # JAX's own setting (e.g. $JAX_COMPILATION_CACHE_DIR) is kept.
    jax.config.update('jax_compilation_cache_dir', str(tmp_path / 'jax'))
    assert compilation_cache.resolve('auto') == tmp_path / 'jax'
  finally:
    jax.config.update('jax_compilation_cache_dir', before)
  monkeypatch.setenv(compilation_cache.ENV, str(tmp_path / 'env'))
  assert compilation_cache.resolve('auto') == tmp_path / 'env'
  assert compilation_cache.resolve(str(tmp_path / 'key')) == tmp_path / 'key'
  for off in ('off', 'OFF', '', '0'):
    assert compilation_cache.resolve(off) is None
  monkeypatch.setenv(compilation_cache.ENV, 'off')
  assert compilation_cache.resolve('auto') is None


def _nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('stacked', [False, True])
def test_both_programs_update_the_state_in_place(tiny_dataset, stacked):
  # Each program donates its input (the train state, then the epoch in
  # flight): XLA must alias at least the parameters and the optimizer
  # state to the outputs, or every segment would hold two copies.
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from mentor_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from mentor_jax import stack  # pylint: disable=g-import-not-at-top
  config = tiny.get_config('lightgcn')
  config.data_npz = str(tiny_dataset)
  dataset = data_lib.load_dataset(tiny_dataset)
  if stacked:
    config.seeds = (0, 1)
    runs = stack.StackedRuns(config, dataset)
    state, compiled = runs.state, runs.compile(runs.state)
  else:
    built = epoch_lib.setup(config, dataset)
    state = built.state
    compiled = epoch_lib.compile_epoch(
        state, built.rest, built.data, graphdef=built.graphdef,
        family=built.family, hp=built.hp)
  carried = _nbytes((state.params, state.opt_state))
  for program in compiled.programs:
    assert program.memory_analysis().alias_size_in_bytes >= carried
