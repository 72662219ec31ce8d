"""The real TikTok data in ../shared/data/tiktok, for MENTOR or any model.

  python -m mentor_jax.train --config configs/tiktok.py --workdir runs/tiktok
  python -m mentor_jax.train --config configs/tiktok.py:lightgcn \
      --workdir runs/lightgcn_tiktok

9,308 users, 6,710 items; real 128-d visual and 128-d acoustic features. The
acoustic features fill MENTOR's second ("textual") modality slot, since the
text features are not in the stored copy (../shared/data/tiktok/README.md).
MENTOR's official hyper-parameters (first cell of the shipped grid:
lambda_g=1e-4, tau=0.2, seed 999); another model's are its MMRec yaml's.
The folder is converted to data/tiktok.npz on first use;
point --config.data_source elsewhere for another copy.
"""

import pathlib

from mentor_jax.configs import base

SHARED_TIKTOK = pathlib.Path(__file__).resolve().parents[2].parent / (
    'shared/data/tiktok')


def get_config(model: str = 'mentor'):
  config = base.get_config(model)
  config.dataset = 'tiktok'
  config.data_npz = 'data/tiktok.npz'
  config.data_source = str(SHARED_TIKTOK)
  config.v_feat_file = 'image_feat.npy'
  config.t_feat_file = 'audio_feat.npy'
  return base.on_dataset(config, 'tiktok')
