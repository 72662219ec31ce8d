"""MENTOR on a seeded synthetic dataset shaped like Amazon Sports.

Same users, items and interactions as the real dataset (MENTOR_SPEC §1.1),
4096-d visual and 384-d text features with planted signal; built on first
use. For speed and memory benchmarks; its metrics mean nothing for the paper.

  python -m mentor_jax.train --config configs/synth_sports.py
"""

from configs import base


def get_config():
  config = base.get_config()
  config.dataset = 'synth_sports'
  config.data_npz = 'data/synth_sports.npz'
  config.data_source = 'synth:sports'
  return config
