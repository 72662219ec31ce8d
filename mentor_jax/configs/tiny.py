"""A CPU-sized config for tests: tiny synthetic data, a few epochs.

  python -m mentor_jax.train --config configs/tiny.py          # MENTOR
  python -m mentor_jax.train --config configs/tiny.py:lightgcn # any model
"""

from mentor_jax.configs import base


def get_config(model: str = 'mentor'):
  config = base.get_config(model)
  config.dataset = 'tiny'
  config.data_npz = 'data/tiny.npz'
  config.data_source = 'synth:tiny'
  config.train_batch_size = 64
  config.epochs = 3
  config.stopping_step = 20
  config.eval_batch_size = 32
  if 'infonce_block_size' in config:  # MENTOR's InfoNCE tiles, sized down.
    config.infonce_block_size = 32
  return config
