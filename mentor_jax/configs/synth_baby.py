"""A seeded synthetic dataset shaped like Amazon Baby, for any model
(the argument; MENTOR by default).

Same users, items and interactions as the real dataset (MENTOR_SPEC §1.1),
4096-d visual and 384-d text features with planted signal; built on first
use. For speed and memory benchmarks; its metrics say nothing about the paper.

  python -m mentor_jax.train --config configs/synth_baby.py
"""

from mentor_jax.configs import base


def get_config(model: str = 'mentor'):
  return base.amazon_config('baby', model, synthetic=True)
