"""MovieLens-100K from ../shared/data/ml-100k, for any model.

  python -m mentor_jax.train --config configs/ml100k.py:lightgcn \
      --workdir runs/lightgcn_ml100k
  mentor-study --config ml100k --seeds 0,1,2,3,4 --workdir studies/ml100k

943 users, 1,682 movies, 100,000 ratings as implicit interactions, MMRec's
seeded split (../shared/data/ml-100k/README.md). Its only side information
is text (title, year, genres encoded by all-MiniLM-L6-v2, 384-d): there are
no images, so the text features fill BOTH modality slots; a multimodal
model's two towers then see the same features. Each model's own settings
(its MMRec yaml's, MENTOR's official ones). Converted to data/ml100k.npz
on first use.
"""

import pathlib

from mentor_jax.configs import base

SHARED_ML100K = pathlib.Path(__file__).resolve().parents[2].parent / (
    'shared/data/ml-100k')


def get_config(model: str = 'mentor'):
  config = base.get_config(model)
  config.dataset = 'ml100k'
  config.data_npz = 'data/ml100k.npz'
  config.data_source = str(SHARED_ML100K)
  config.v_feat_file = 'text_feat.npy'
  config.t_feat_file = 'text_feat.npy'
  return base.on_dataset(config, 'ml100k')
