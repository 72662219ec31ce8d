"""End-to-end training: real TikTok data, a popularity baseline, one compile."""

import dataclasses
import json
import platform

import numpy as np
import pytest

import conftest

from configs import tiny
from mentor_jax import data as data_lib
from mentor_jax import errors
from mentor_jax import family as family_lib
from mentor_jax import metrics
from mentor_jax.models.mentor import objective
from mentor_jax import registry
from mentor_jax import train
from mentor_jax import epoch as epoch_lib
from mentor_jax import runbook
from mentor_jax import rundirs


@pytest.fixture(scope='module')
def tiktok_slice(shared_data, tmp_path_factory):
  """The first 1,200 users of the real TikTok data, prepared as .npz."""
  return conftest.prepare_tiktok_slice(
      shared_data, tmp_path_factory.mktemp('tiktok_slice'), 1200)


@pytest.mark.slow  # ~5 min on 2 cores; `python -m pytest -m slow`
def test_training_beats_popularity_on_real_tiktok(tiktok_slice, tmp_path):
  config = tiny.get_config()
  config.data_npz = str(tiktok_slice)
  config.data_source = ''
  config.train_batch_size = 1024
  config.learning_rate = 1e-3  # Short run: a larger step than the paper's.
  config.epochs = 12
  config.eval_batch_size = 512
  config.infonce_block_size = 512
  config.valid_metric = 'recall@20'
  result = train.train_and_evaluate(config, tmp_path)

  log = rundirs.read_metrics(tmp_path)
  assert len(log) == result['epochs_run'] == 12
  bpr = [r['loss']['bpr'] for r in log]
  assert bpr[-1] < 0.9 * bpr[0], bpr
  assert all(np.isfinite(r['loss']['nce_g']) for r in log)
  assert json.loads((tmp_path / 'config.json').read_text())['seed'] == 999

  dataset = data_lib.load_dataset(tiktok_slice)
  pop = metrics.popularity_scores(dataset.arrays['train_item'],
                                  dataset.n_items)
  user = np.ones((dataset.n_users, 1), np.float32)
  baseline = metrics.evaluate_embeddings(
      user, pop[:, None], *dataset.split('valid'), *dataset.split('train'),
      ks=(20,))
  assert result['valid']['recall@20'] > baseline['recall@20'], (
      result['valid'], baseline)


def test_epoch_compiles_once(tiny_dataset, tmp_path, monkeypatch):
  traces = []

  def counting_setup(ctx, params, opt_state, key):
    traces.append(1)  # Runs once per trace of the epoch's first program.
    return family_lib.no_epoch_setup(ctx, params, opt_state, key)

  family = dataclasses.replace(objective.MENTOR, epoch_setup=counting_setup)
  monkeypatch.setattr(registry, 'get', lambda name: family)
  config = tiny.get_config()
  config.data_npz = str(tiny_dataset)
  config.epochs = 3
  train.train_and_evaluate(config, tmp_path)
  assert len(traces) == 1


def test_same_seed_same_metrics(tiny_dataset, tmp_path):
  config = tiny.get_config()
  config.data_npz = str(tiny_dataset)
  config.epochs = 2
  a = train.train_and_evaluate(config, tmp_path / 'a')
  b = train.train_and_evaluate(config, tmp_path / 'b')
  assert a == b
  # result.json names the data by content (report --compare checks it).
  assert a['data_sha256'] == data_lib.load_dataset(tiny_dataset).digest
  config.seed = 1
  c = train.train_and_evaluate(config, tmp_path / 'c')
  assert c['valid'] != a['valid']


def test_nan_loss_stops_training(tiny_dataset, tmp_path):
  config = tiny.get_config()
  config.data_npz = str(tiny_dataset)
  # Adam's steps are about learning_rate in size: the parameters overflow.
  config.learning_rate = 1e30
  with pytest.raises(FloatingPointError, match=r'epoch 0, step \d+ .*became '
                     'NaN or inf.*learning rate'):
    train.train_and_evaluate(config, tmp_path)


def test_non_finite_error_names_the_first_bad_step_and_part():
  nan, inf = float('nan'), float('inf')
  parts = {'bpr': np.array([1.0, 1.0, nan, nan]),
           'align': np.array([0.5, 0.5, 0.5, inf]),
           'reg': np.array([0.1, inf, 0.1, 0.1])}
  err = runbook.non_finite_error(parts, epoch=3, first_step=40)
  # Step 2 of the epoch (global 42) is the first bad one, through 'reg'.
  assert str(err).startswith("epoch 3, step 42 (step 2 of the epoch): loss "
                             "part 'reg' became NaN or inf;")
  assert runbook.non_finite_error({'bpr': np.ones(3)}, 0, 0) is None


def test_a_nan_learning_rate_is_refused_before_training(tiny_dataset,
                                                       tmp_path):
  config = tiny.get_config()
  config.data_npz = str(tiny_dataset)
  config.learning_rate = float('nan')
  with pytest.raises(errors.ConfigError, match='config.learning_rate=nan'):
    train.train_and_evaluate(config, tmp_path)
  assert not (tmp_path / 'config.json').exists()


def test_bad_valid_metric_is_rejected(tiny_dataset, tmp_path):
  config = tiny.get_config()
  config.data_npz = str(tiny_dataset)
  config.valid_metric = 'recall@15'
  with pytest.raises(ValueError, match='valid_metric'):
    train.train_and_evaluate(config, tmp_path)


def test_missing_dataset_says_how_to_get_it(tmp_path):
  config = tiny.get_config()
  config.data_npz = str(tmp_path / 'absent.npz')
  config.data_source = ''
  with pytest.raises(FileNotFoundError, match='data_prep convert'):
    train.train_and_evaluate(config, tmp_path)


def test_early_stopping_rule():
  stopper = runbook.EarlyStopping(patience=2)
  seq = [0.1, 0.2, 0.2, 0.15, 0.2]
  out = [stopper.update(v) for v in seq]
  # Strictly better only; stop on the third consecutive miss.
  assert out == [(True, False), (True, False), (False, False),
                 (False, False), (False, True)]


def test_release_freed_host_memory_finds_glibc():
  if platform.libc_ver()[0] != 'glibc':
    pytest.skip(f'C library is {platform.libc_ver()[0] or "unknown"}, '
                'not glibc: malloc_trim does not exist there')
  assert epoch_lib.release_freed_host_memory() is True
