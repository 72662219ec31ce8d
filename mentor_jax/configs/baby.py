"""Amazon Baby (MMRec's version), for MENTOR (the official settings) or
any model given as the argument (configs/baby.py:lightgcn).

  python -m data_prep convert --src DATA/baby --out data/baby.npz
  python -m mentor_jax.train --config configs/baby.py --workdir runs/baby

DATA/baby is the MMRec-format folder (baby.inter, image_feat.npy,
text_feat.npy) from the MMRec or MENTOR Google Drive folder (README). The
paper's MENTOR row is in ../shared/docs/MENTOR_SPEC.md §9.1. The shipped grid
is mask_weight_g in {1e-4, 1e-3} x temp in {0.2, 0.4, 0.6}; this config is
its first cell (override with --config.mask_weight_g=... --config.temp=...).
"""

from mentor_jax.configs import base


def get_config(model: str = 'mentor'):
  return base.amazon_config('baby', model)
