"""A CPU-sized config for tests: tiny synthetic data, a few epochs."""

from mentor_jax.configs import base


def get_config():
  config = base.get_config()
  config.dataset = 'tiny'
  config.data_npz = 'data/tiny.npz'
  config.data_source = 'synth:tiny'
  config.train_batch_size = 64
  config.epochs = 3
  config.stopping_step = 20
  config.eval_batch_size = 32
  config.infonce_block_size = 32
  return config
