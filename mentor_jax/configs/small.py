"""The README's default job: a seeded synthetic dataset, built on first use.

  python -m mentor_jax.train --config configs/small.py --workdir runs/small
  python -m mentor_jax.train --config configs/small.py:freedom  # any model

1,000 users and 600 items with planted latent structure (data_prep.synthetic);
a few seconds per epoch on a 2-core CPU.
"""

from mentor_jax.configs import base


def get_config(model: str = 'mentor'):
  config = base.get_config(model)
  config.dataset = 'small'
  config.data_npz = 'data/small.npz'
  config.data_source = 'synth:small'
  config.epochs = 30
  return config
