"""Successive halving (mentor_jax/halving.py) and what it is built on:
explicit cell lists in a sweep, frozen runs of a stack.

The decisions are checked against the runs' own logs: at each rung, the
cells frozen are the worse half by the best valid metric each cell's
metrics.jsonl holds up to that rung, recomputed here with numpy.
"""

import json

import numpy as np
import pytest

import conftest
from mentor_jax import errors
from mentor_jax import grid as grid_lib
from mentor_jax import halving
from mentor_jax import registry
from mentor_jax import rundirs
from mentor_jax import stack
from mentor_jax import sweeps
from mentor_jax import train


# --- the pure parts, by hand -------------------------------------------------


def test_rungs_double_until_one_cell_or_the_limit():
  assert halving.rungs(10, 1000, 8) == [10, 20, 40]  # 8 -> 4 -> 2 -> 1
  assert halving.rungs(10, 1000, 7) == [10, 20, 40]  # 7 -> 4 -> 2 -> 1
  assert halving.rungs(10, 1000, 3) == [10, 20]  # 3 -> 2 -> 1
  assert halving.rungs(1, 4, 8) == [1, 2]  # 4 epochs: no rung at 4
  assert halving.rungs(5, 100, 1) == []


def test_worse_half_ranks_by_score_none_first_ties_keep_the_earlier():
  assert halving.worse_half({0: .1, 1: .3, 2: None, 3: .2}) == [0, 2]
  assert halving.worse_half({4: .5, 7: .5, 9: .5}) == [9]  # keeps 4 and 7
  assert halving.worse_half({3: .2}) == []


def test_run_epochs_by_hand():
  # 8 cells x 10, 4 more x 10 (to 20), 2 more x 20 (to 40), 1 x 60.
  assert halving.run_epochs(10, 8, 100) == 8 * 10 + 4 * 10 + 2 * 20 + 60
  assert halving.run_epochs(10, 1, 100) == 100


# --- sweeps of listed cells, frozen runs -------------------------------------


def _lightgcn(npz, **kw):
  config = conftest.baseline_config('lightgcn', npz)
  config.train_batch_size = 64
  for k, v in kw.items():
    config[k] = v
  return config


def test_a_sweep_lists_cells_with_bars(tiny_dataset):
  family = registry.get('lightgcn')
  config = _lightgcn(tiny_dataset, seeds=(0, 1),
                     sweep='reg_weight=1e-4,1e-3;learning_rate=0.01'
                     '|learning_rate=0.1;reg_weight=1e-2')
  runs = stack.runs_from_config(config, family)
  assert [(r.overrides, r.seed) for r in runs] == [
      ({'reg_weight': 1e-4, 'learning_rate': 0.01}, 0),
      ({'reg_weight': 1e-4, 'learning_rate': 0.01}, 1),
      ({'reg_weight': 1e-3, 'learning_rate': 0.01}, 0),
      ({'reg_weight': 1e-3, 'learning_rate': 0.01}, 1),
      ({'reg_weight': 1e-2, 'learning_rate': 0.1}, 0),
      ({'reg_weight': 1e-2, 'learning_rate': 0.1}, 1)]
  for sweep, needle in [('reg_weight=1e-4|learning_rate=0.1', 'same keys'),
                        ('reg_weight=1e-4|reg_weight=1e-3,1e-4',
                         'listed twice')]:
    config.sweep = sweep
    with pytest.raises(errors.ConfigError, match=needle):
      stack.runs_from_config(config, family)
  mentor = registry.get('mentor')
  from configs import tiny  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.ConfigError, match='removes its loss term'):
    sweeps.sweep_cells('mask_weight_g=0|mask_weight_g=1e-3',
                      tiny.get_config(), mentor)


def test_sample_groups_stack_what_can_be_stacked(tiny_dataset):
  config = _lightgcn(tiny_dataset)
  sample = [{'n_layers': 1, 'reg_weight': 1e-4},
            {'n_layers': 2, 'reg_weight': 1e-4},
            {'n_layers': 1, 'reg_weight': 1e-2},
            {'n_layers': 3, 'reg_weight': 1e-3}]
  groups = grid_lib.sample_groups(config, sample)
  assert groups == [({'n_layers': 1}, [0, 2]),
                    ({'n_layers': 2, 'reg_weight': 1e-4}, [1]),
                    ({'n_layers': 3, 'reg_weight': 1e-3}, [3])]
  assert grid_lib.sample_sweep([sample[0], sample[2]], groups[0][0]) == (
      'reg_weight=0.0001|reg_weight=0.01')
  assert grid_lib.sample_sweep([sample[1]], groups[1][0]) == ''


@pytest.mark.parametrize('kw, needle', [
    (dict(freeze_runs=(0,)), 'this config is one run'),
    (dict(seeds=(0, 1), freeze_runs=(2,)), 'the runs 0..1'),
    (dict(seeds=(0, 1), freeze_runs=(1, 1)), 'distinct'),
])
def test_bad_freeze_runs_are_refused(tiny_dataset, kw, needle):
  with pytest.raises(errors.ConfigError, match=needle):
    train.check_config(_lightgcn(tiny_dataset, **kw))


def test_a_frozen_run_trains_no_further_and_the_others_as_before(
    tiny_dataset, tmp_path):
  config = _lightgcn(tiny_dataset, seeds=(0, 1, 2), epochs=2)
  train.train_and_evaluate(config, tmp_path / 'frozen')
  straight = train.train_and_evaluate(
      _lightgcn(tiny_dataset, seeds=(0, 1, 2), epochs=4), tmp_path / 'all')
  config.epochs, config.freeze_runs = 4, (1,)
  result = train.train_and_evaluate(config, tmp_path / 'frozen')
  assert [r['epochs_run'] for r in result['runs']] == [4, 2, 4]
  assert len(rundirs.read_metrics(tmp_path / 'frozen' / 'runs' / '1')) == 2
  for k in (0, 2):  # the active runs: as if no run had been frozen
    assert result['runs'][k]['test'] == straight['runs'][k]['test']


# --- the search ---------------------------------------------------------------


CELLS = [{'n_layers': 1, 'learning_rate': 0.05},
         {'n_layers': 1, 'learning_rate': 0.001},
         {'n_layers': 2, 'learning_rate': 0.02},
         {'n_layers': 2, 'learning_rate': 0.0005},
         {'n_layers': 1, 'learning_rate': 0.01}]


def _best_epoch_up_to(log, epochs, metric):
  """MMRec's rule: the first epoch of the highest valid metric, rounded
  to 4 decimals."""
  return max(range(min(epochs, len(log))),
             key=lambda e: (round(log[e]['valid'][metric], 4), -e))


def test_halving_freezes_the_worse_half_and_resumes(tiny_dataset, tmp_path):
  config = _lightgcn(tiny_dataset, epochs=4, stopping_step=50)
  calls = []

  def stopped_in_rung_two(job, workdir):  # SIGTERM before its 4th training
    calls.append(workdir)
    if len(calls) == 4:
      return {'interrupted': 'SIGTERM'}
    return train.train_and_evaluate(job, workdir)

  first = halving.search(config, CELLS, 3, 1, tmp_path, stopped_in_rung_two)
  assert first == {'interrupted': 'SIGTERM'}
  record = json.loads((tmp_path / halving.RECORD_FILE).read_text())
  assert len(record['rungs']) == 1  # rung 1 decided, rung 2 under way
  found = halving.search(config, CELLS, 3, 1, tmp_path,
                         train.train_and_evaluate)
  assert found['rungs'] == json.loads(
      (tmp_path / halving.RECORD_FILE).read_text())['rungs']
  # Each cell's log, found through its stack's config.
  logs = {}
  for shared, members in grid_lib.sample_groups(config, CELLS):
    stack_dir = tmp_path / grid_lib.cell_name(shared)
    saved = json.loads((stack_dir / 'config.json').read_text())
    assert saved['seeds'] == [3]
    for k, i in enumerate(members):
      logs[i] = rundirs.read_metrics(stack_dir / 'runs' / str(k))
  metric = config.valid_metric
  names = [grid_lib.cell_name(c) for c in CELLS]
  alive = set(range(len(CELLS)))
  assert [r['epochs'] for r in found['rungs']] == [1, 2]  # 5 -> 3 -> 2
  for rung in found['rungs']:
    scores = {i: logs[i][_best_epoch_up_to(logs[i], rung['epochs'],
                                           metric)]['valid'][metric]
              for i in sorted(alive)}
    assert rung['scores'] == {names[i]: v for i, v in scores.items()}
    order = sorted(alive, key=lambda i: (-scores[i], i))
    frozen = sorted(order[len(order) - len(order) // 2:])
    assert rung['frozen'] == [names[i] for i in frozen]
    for i in frozen:  # trained to the rung, no further
      assert len(logs[i]) == rung['epochs']
      assert found['rows'][i]['frozen_after'] == rung['epochs']
    alive -= set(frozen)
  assert len(alive) == 2
  for i in alive:
    assert len(logs[i]) == 4 and found['rows'][i]['frozen_after'] is None
  for i, row in enumerate(found['rows']):
    best = _best_epoch_up_to(logs[i], len(logs[i]), metric)
    assert row['best_epoch'] == best
    assert row['valid'] == logs[i][best]['valid']
