"""Conformance of every registered model family (`registry.FAMILIES`).

A new model gets these for free: its configs build on every dataset
config, its metadata names real parameters and settings, and through the
trainer it trains to finite losses, a stack of 2 runs equals the 2 runs
trained alone, a run stopped and resumed equals one trained straight, and
its best checkpoint reproduces the logged metrics. Nothing here knows one
model from another.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math

import jax
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from mentor_jax import config_spec
from mentor_jax import data as data_lib
from mentor_jax import evaluate
from mentor_jax import registry
from mentor_jax import rundirs
from mentor_jax import train

FAMILIES = [f.name for f in registry.FAMILIES]
DATASET_CONFIGS = ('base', 'tiny', 'small', 'tiktok', 'baby', 'sports',
                   'clothing', 'synth_baby', 'synth_sports', 'synth_clothing')
EPOCHS = 2
# Run k of a stack against the same run alone: XLA's batched or scanned
# kernels may sum in another order (tests/test_stack.py says more).
LOSS_RTOL = 1e-4
METRIC_ATOL = 1e-9


def test_every_model_is_listed():
  assert len(FAMILIES) == len(set(FAMILIES)) >= 9
  assert registry.names() == sorted(FAMILIES)


@pytest.mark.parametrize('dataset', DATASET_CONFIGS)
@pytest.mark.parametrize('model', FAMILIES)
def test_every_model_on_every_dataset_config(model, dataset):
  # `--config configs/<dataset>.py:<model>`: the data section of the
  # dataset, every default of the model, nothing of another model.
  config = importlib.import_module(f'configs.{dataset}').get_config(model)
  family = registry.get(model)
  assert config.model == model
  train.check_config(config)  # Every key known and valid.
  defaults = family.config_defaults()
  own = set(config.keys()) - set(config_spec.TRAINER)
  assert own == set(defaults) - set(config_spec.TRAINER), own ^ set(defaults)
  if dataset == 'base':  # The model's defaults, unchanged.
    for key, value in defaults.items():
      got = config[key]
      got = got.to_dict() if key == 'grid' else got
      if isinstance(value, dict):
        value = {k: list(v) for k, v in value.items()}
        got = {k: list(v) for k, v in got.items()}
      elif isinstance(value, tuple):
        got = tuple(got)
      assert got == value, key


@pytest.mark.parametrize('model', FAMILIES)
def test_family_metadata_names_real_things(model, tiny_dataset):
  family = registry.get(model)
  assert family.title and family.name == model
  fields = {f.name for f in dataclasses.fields(family.hparams)}
  assert family.sweepable <= fields and family.gated <= family.sweepable
  assert set(family.report_keys) <= set(family.config_spec)
  grid = family.config_defaults().get('grid', {})
  assert set(grid) <= set(family.config_spec) | set(config_spec.TRAINER)
  # Each table names parameters whose rows are users or items.
  config = tiny.get_config(model)
  dataset = data_lib.load_dataset(tiny_dataset)
  params = nnx.state(family.create_model(config, dataset), nnx.Param)
  leaves = jax.tree_util.tree_leaves_with_path(params)
  for name in family.table_params:
    rows = {x.shape[0] for path, x in leaves
            if name in jax.tree_util.keystr(path)}
    assert rows and rows <= {dataset.n_users, dataset.n_items}, (name, rows)


def _config(model, npz, **overrides):
  config = tiny.get_config(model)
  config.data_npz = str(npz)
  config.epochs = EPOCHS
  config.learning_rate = 1e-2 if model != 'mentor' else 1e-3
  if 'knn_k' in config and model == 'lattice':
    config.knn_k = 5
  for key, value in overrides.items():
    config[key] = value
  return config


def _records(run_dir):
  return [{k: v for k, v in r.items() if 'time' not in k and k != 'stack_runs'}
          for r in rundirs.read_metrics(run_dir)]


def _assert_same_run(stacked, alone):
  assert [r['epoch'] for r in stacked] == [r['epoch'] for r in alone]
  for a, b in zip(stacked, alone):
    assert a['step'] == b['step'] and a['best_epoch'] == b['best_epoch']
    assert a['loss'].keys() == b['loss'].keys()
    for name, value in a['loss'].items():
      assert math.isfinite(value), name
      assert math.isclose(value, b['loss'][name], rel_tol=LOSS_RTOL,
                          abs_tol=1e-7), name
    for split in ('valid', 'test'):
      for metric, value in a[split].items():
        assert abs(value - b[split][metric]) <= METRIC_ATOL, (split, metric)


@pytest.mark.parametrize('model', FAMILIES)
def test_stack_resume_and_checkpoint(model, tiny_dataset, tmp_path):
  # A stack of seeds (3, 5).
  stacked = train.train_and_evaluate(
      _config(model, tiny_dataset, seeds=(3, 5)), tmp_path / 'stack')
  assert [r['seed'] for r in stacked['runs']] == [3, 5]
  # Seed 5 alone, straight through: run 1 of the stack.
  alone = train.train_and_evaluate(_config(model, tiny_dataset, seed=5),
                                   tmp_path / 'seed5')
  _assert_same_run(_records(tmp_path / 'stack' / 'runs' / '1'),
                   _records(tmp_path / 'seed5'))
  assert alone['best_epoch'] == stacked['runs'][1]['best_epoch']
  # Seed 3 stopped after one epoch, then resumed: run 0 of the stack. The
  # family's whole train state (its optimizer's too) went through a
  # checkpoint and came back.
  resumed_dir = tmp_path / 'seed3'
  train.train_and_evaluate(_config(model, tiny_dataset, seed=3, epochs=1),
                           resumed_dir)
  resumed = train.train_and_evaluate(_config(model, tiny_dataset, seed=3),
                                     resumed_dir)
  _assert_same_run(_records(tmp_path / 'stack' / 'runs' / '0'),
                   _records(resumed_dir))
  assert resumed['epochs_run'] == EPOCHS
  # Its best checkpoint, read back by `evaluate`, ranks as training did.
  out = tmp_path / 'eval.json'
  assert evaluate.main(['--workdir', str(resumed_dir), '--json-out',
                        str(out)]) == 0
  evaluated = json.loads(out.read_text())
  for metric, value in resumed['test'].items():
    np.testing.assert_allclose(evaluated['test'][metric], value, atol=1e-6,
                               err_msg=metric)
