"""Stacked runs (mentor_jax/stack.py): K runs as one vmapped program.

The reference for run k of a stack is the same settings trained alone
(`stack.run_config`), through the ordinary trainer.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

import conftest
from configs import tiny
from mentor_jax import errors
from mentor_jax import evaluate
from mentor_jax import grid as grid_lib
from mentor_jax import recommend
from mentor_jax import registry
from mentor_jax import stack
from mentor_jax import train
from mentor_jax import rundirs

EPOCHS = 2
# Largest difference seen between run k of a stack and the same run alone,
# over every family, metric and loss part of these tests (2-core x86 CPU,
# jax 0.10.2): XLA's batched kernels sum in another order. Metrics are
# means of 0/1 hits and discounts over ~60 users, so a flipped tie in a
# ranking would move them by >= 1/60; float noise in the losses stays far
# below this bound.
LOSS_TOLERANCE = 1e-4
METRIC_TOLERANCE = 1e-9


def mentor_config(npz, **overrides):
  config = tiny.get_config()
  config.data_npz = str(npz)
  config.epochs = EPOCHS
  for k, v in overrides.items():
    config[k] = v
  return config


def baseline_config(model, npz, **overrides):
  config = conftest.baseline_config(model, npz)
  config.train_batch_size = 64
  config.epochs = EPOCHS
  config.learning_rate = 1e-2
  for k, v in overrides.items():
    config[k] = v
  return config


def _log(path):
  return rundirs.read_metrics(path)


def _compare_logs(stacked, alone):
  assert [r['epoch'] for r in stacked] == [r['epoch'] for r in alone]
  worst = 0.0
  for a, b in zip(stacked, alone):
    assert a['loss'].keys() == b['loss'].keys()
    for name in a['loss']:
      worst = max(worst, abs(a['loss'][name] - b['loss'][name]))
      assert math.isclose(a['loss'][name], b['loss'][name],
                          rel_tol=LOSS_TOLERANCE, abs_tol=1e-7), name
    for split in ('valid', 'test'):
      for m, v in a[split].items():
        assert abs(v - b[split][m]) <= METRIC_TOLERANCE, (split, m)
  return worst


# --- parsing --------------------------------------------------------------------


def test_runs_are_the_sweep_times_the_seeds(tiny_dataset):
  config = mentor_config(tiny_dataset, seeds=(4, 7),
                         sweep='mask_weight_g=1e-4,1e-3; temp=0.2,0.4,0.6')
  runs = stack.runs_from_config(config, registry.get('mentor'))
  assert len(runs) == 12
  assert [r.seed for r in runs[:4]] == [4, 7, 4, 7]
  assert runs[0].overrides == {'mask_weight_g': 1e-4, 'temp': 0.2}
  assert runs[3].overrides == {'mask_weight_g': 1e-4, 'temp': 0.4}
  assert runs[-1].overrides == {'mask_weight_g': 1e-3, 'temp': 0.6}
  one = stack.run_config(config, runs[3])
  assert (one.seed, one.temp, one.mask_weight_g) == (7, 0.4, 1e-4)
  assert not train.stack_requested(one)
  # Without seeds: config.seed, once per cell.
  config = mentor_config(tiny_dataset, sweep='temp=0.2,0.4')
  assert [r.seed for r in stack.runs_from_config(
      config, registry.get('mentor'))] == [config.seed] * 2


@pytest.mark.parametrize('sweep, needle', [
    ('n_ui_layers=1,2', 'cannot be swept'),
    ('temp=0.2,x', 'must be numbers'),
    ('temp', 'expected key=v1,v2'),
    ('temp=0.2;temp=0.4', 'swept twice'),
    ('temp=-1', 'config.sweep:temp=-1.0'),
    ('mask_weight_g=0,1e-3', 'removes its loss term'),
])
def test_bad_sweeps_are_refused_by_name(tiny_dataset, sweep, needle):
  config = mentor_config(tiny_dataset, sweep=sweep)
  with pytest.raises(errors.ConfigError, match=needle):
    stack.runs_from_config(config, registry.get('mentor'))


def test_repeated_seeds_are_refused(tiny_dataset, tmp_path):
  config = mentor_config(tiny_dataset, seeds=(1, 1))
  with pytest.raises(errors.ConfigError, match='distinct'):
    train.train_and_evaluate(config, tmp_path)


def test_freedom_dropout_is_not_sweepable(tiny_dataset):
  # FREEDOM keeps int(n_edges * (1 - dropout)) edges: a shape.
  config = baseline_config('freedom', tiny_dataset, sweep='dropout=0.8,0.9')
  with pytest.raises(errors.ConfigError, match='cannot be swept'):
    stack.runs_from_config(config, registry.get('freedom'))


# --- run k of a stack == the run alone ----------------------------------------------


def _stack_vs_alone(config, tmp_path, runs_alone=(1,)):
  result = train.train_and_evaluate(config, tmp_path / 'stack')
  runs = stack.runs_from_config(config, registry.get(config.model))
  assert [r['seed'] for r in result['runs']] == [r.seed for r in runs]
  worst = 0.0
  for k in runs_alone:
    alone = train.train_and_evaluate(stack.run_config(config, runs[k]),
                                     tmp_path / f'alone{k}')
    got = result['runs'][k]
    assert got['best_epoch'] == alone['best_epoch']
    worst = max(worst, _compare_logs(
        _log(tmp_path / 'stack' / 'runs' / str(k)),
        _log(tmp_path / f'alone{k}')))
  return result, worst


# One by one (the CPU default), and one vmap: the vmap form is also checked
# by the FREEDOM, LATTICE and LGMRec stacks below; MENTOR's (46 s) is slow.
@pytest.mark.parametrize('parallel', [
    pytest.param('all', marks=pytest.mark.slow), '1'])
def test_mentor_stack_matches_runs_alone(tiny_dataset, tmp_path, parallel):
  config = mentor_config(tiny_dataset, seeds=(0, 1),
                         sweep='temp=0.2,0.5;mask_weight_g=1e-3',
                         stack_parallel=parallel)
  result, worst = _stack_vs_alone(config, tmp_path, runs_alone=(0, 3))
  assert len(result['runs']) == 4
  # Different seeds and temperatures do train differently.
  tests = {json.dumps(r['test'], sort_keys=True) for r in result['runs']}
  assert len(tests) > 1
  print('largest loss difference', worst)


@pytest.mark.parametrize('model', ['freedom', 'lattice'])
def test_baseline_stack_as_one_vmap_matches_run_alone(tiny_dataset, tmp_path,
                                                      model):
  # The whole stack as one vmap (the accelerator's form). The CPU's form,
  # one run after another in the program, is checked for every family by
  # tests/test_families.py.
  config = baseline_config(model, tiny_dataset, seeds=(3, 5),
                           sweep='learning_rate=1e-2', stack_parallel='all')
  if model == 'lattice':
    config.knn_k = 5
  _, worst = _stack_vs_alone(config, tmp_path)
  print(model, 'largest loss difference', worst)


def test_swept_reg_weight_matches_static_value(tiny_dataset, tmp_path):
  config = baseline_config('lightgcn', tiny_dataset,
                           sweep='reg_weight=1e-4,1e-1')
  _stack_vs_alone(config, tmp_path, runs_alone=(0, 1))


# --- files, early stopping, resume --------------------------------------------------


def test_stack_layout_and_summary(tiny_dataset, tmp_path):
  config = baseline_config('mfbpr', tiny_dataset, seeds=(0, 1, 2))
  result = train.train_and_evaluate(config, tmp_path)
  on_disk = json.loads((tmp_path / 'result.json').read_text())
  assert on_disk['runs'] == json.loads(json.dumps(result['runs']))
  for k in range(3):
    run_dir = tmp_path / 'runs' / str(k)
    single = json.loads((run_dir / 'result.json').read_text())
    assert single['test'] == result['runs'][k]['test']
    saved = json.loads((run_dir / 'config.json').read_text())
    assert saved['seed'] == k and saved['seeds'] == []
    per_user = np.load(run_dir / rundirs.PER_USER_FILE)
    assert np.isclose(per_user['recall@20'].mean(),
                      single['test']['recall@20'])
  values = [r['test']['recall@20'] for r in result['runs']]
  summary = result['summary']['test']['recall@20']
  assert summary['mean'] == pytest.approx(np.mean(values))
  assert summary['std'] == pytest.approx(np.std(values, ddof=1))
  assert rundirs.run_dir(tmp_path, 2) == tmp_path / 'runs' / '2'
  # evaluate and recommend read run K's best checkpoint.
  out = tmp_path / 'eval1.json'
  assert evaluate.main(['--workdir', str(tmp_path), '--run', '1',
                        '--json-out', str(out)]) == 0
  evaluated = json.loads(out.read_text())
  for m, v in result['runs'][1]['test'].items():
    assert evaluated['test'][m] == pytest.approx(v, abs=1e-6), m
  assert evaluate.main(['--workdir', str(tmp_path)]) == 2  # which run?
  recs = tmp_path / 'recs.json'
  assert recommend.main(['--workdir', str(tmp_path), '--run', '0',
                         '--users', '0,1', '--out', str(recs)]) == 0
  assert recs.exists()
  with pytest.raises(errors.ConfigError, match='--run K'):
    rundirs.run_dir(tmp_path, None)
  with pytest.raises(errors.ConfigError, match='0..2'):
    rundirs.run_dir(tmp_path, 3)


def test_each_run_stops_on_its_own(tiny_dataset, tmp_path):
  # Patience 1: a run stops after its second epoch in a row without
  # improvement: at once with lr 1e-7 (its metrics do not move), later
  # with lr 1e-2.
  config = baseline_config('mfbpr', tiny_dataset, stopping_step=1,
                           epochs=12, sweep='learning_rate=1e-7,1e-2')
  result = train.train_and_evaluate(config, tmp_path)
  epochs = [r['epochs_run'] for r in result['runs']]
  for k, r in enumerate(result['runs']):
    log = _log(tmp_path / 'runs' / str(k))
    assert len(log) == r['epochs_run']
    assert log[-1]['best_epoch'] == r['best_epoch']
    alone = train.train_and_evaluate(
        stack.run_config(config, stack.runs_from_config(
            config, registry.get('mfbpr'))[k]), tmp_path / f'alone{k}')
    assert alone['epochs_run'] == r['epochs_run']
    assert alone['best_epoch'] == r['best_epoch']
  assert len(set(epochs)) == 2, epochs


def test_stack_resumes_exactly(tiny_dataset, tmp_path):
  config = baseline_config('lightgcn', tiny_dataset, seeds=(0, 1), epochs=4)
  straight = train.train_and_evaluate(config, tmp_path / 'straight')
  config.epochs = 2
  train.train_and_evaluate(config, tmp_path / 'resumed')
  config.epochs = 4
  resumed = train.train_and_evaluate(config, tmp_path / 'resumed')
  assert resumed['runs'] == straight['runs']
  for k in range(2):
    a = _log(tmp_path / 'straight' / 'runs' / str(k))
    b = _log(tmp_path / 'resumed' / 'runs' / str(k))
    strip = lambda log: [{k: v for k, v in r.items() if 'time' not in k}
                         for r in log]
    assert strip(a) == strip(b)
  # Other seeds on the same workdir are refused, naming both.
  config.seeds = (0, 2)
  with pytest.raises(errors.CheckpointError, match='other seeds'):
    train.train_and_evaluate(config, tmp_path / 'resumed')


# --- the grid runner: one stack per static cell ----------------------------------


def test_grid_groups_cover_every_cell_once(tiny_dataset):
  config = mentor_config(tiny_dataset)
  grid = {'temp': [0.2, 0.4], 'n_ui_layers': [1, 2],
          'mask_weight_g': [0.0, 1e-4, 1e-3]}
  groups = grid_lib.stack_groups(config, grid)
  # n_ui_layers is static; mask_weight_g = 0 removes a term: its own group.
  assert len(groups) == 4
  covered = []
  for static, swept in groups:
    assert 'n_ui_layers' in static and 'n_ui_layers' not in swept
    for values in itertools.product(*swept.values()):
      covered.append(dict(static, **dict(zip(swept, values))))
  key = lambda c: tuple(sorted(c.items()))
  assert sorted(map(key, covered)) == sorted(map(key, grid_lib.cells(grid)))
  assert ({'n_ui_layers': 1, 'mask_weight_g': 0.0},
          {'temp': [0.2, 0.4]}) in groups


def test_grid_runner_stacks_cells(tiny_dataset, tmp_path):
  config = mentor_config(tiny_dataset, epochs=1, seeds=(0, 1))
  grid = {'temp': [0.2, 0.4], 'n_ui_layers': [1, 2]}
  summary = grid_lib.run_grid(config, tmp_path, grid, stacked=True)
  names = sorted(c['name'] for c in summary['cells'])
  assert names == sorted(grid_lib.cell_name(
      {'temp': t, 'n_ui_layers': n}) for t in (0.2, 0.4) for n in (1, 2))
  for row in summary['cells']:
    assert row['seeds'] == [0, 1]
    stack_dir = tmp_path / f'n_ui_layers={row["cell"]["n_ui_layers"]}'
    runs = json.loads((stack_dir / 'result.json').read_text())['runs']
    mine = [r for r in runs if r['run'] in row['runs']]
    assert all(r['overrides'] == {'temp': row['cell']['temp']} for r in mine)
    assert row['test']['recall@20'] == pytest.approx(
        np.mean([r['test']['recall@20'] for r in mine]))
