"""bench/reference/first_batch_loss.py: the first batch's loss at init."""

import json

import pytest

import conftest
from mentor_jax import train
from mentor_jax.configs import baseline

first_batch_loss = conftest.import_bench_reference('first_batch_loss')


@pytest.mark.parametrize('model', ['lightgcn', 'vbpr', 'diffmm'])
def test_parts_are_the_trainers_first_step(tiny_dataset, tmp_path, model):
  # One batch holds the whole epoch, so epoch 0's logged step parts are
  # exactly the loss of its first step (DiffMM: after its denoiser phase,
  # on the graphs that phase rebuilt).
  config = baseline.get_config(f'{model},tiny')
  config.data_npz = str(tiny_dataset)
  config.train_batch_size = 4096
  config.epochs = 1
  config.seed = 3
  train.train_and_evaluate(config, tmp_path)
  [logged] = [json.loads(line)['loss'] for line in
              (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  parts = first_batch_loss.first_batch_parts(config)
  # The log also holds a per-epoch phase's parts (DiffMM's denoisers).
  assert 'bpr' in parts and parts.keys() <= logged.keys()
  for name, value in parts.items():
    assert value == pytest.approx(logged[name], rel=1e-5), name
  config.seed = 4  # another seed starts elsewhere
  assert first_batch_loss.first_batch_parts(config)['bpr'] != parts['bpr']
