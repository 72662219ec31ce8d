"""MMRec baselines (MF-BPR, LightGCN, FREEDOM) on any dataset config.

  python -m mentor_jax.train --config configs/baseline.py:lightgcn,baby \
      --workdir runs/lightgcn_baby

The argument is `MODEL,DATASET`:

* MODEL: mfbpr | lightgcn | freedom | vbpr | bm3 | lgmrec | mmgcn | lattice
  (| mentor, which is configs/DATASET.py).
* DATASET: baby | sports | clothing | tiktok, the data section of
  configs/DATASET.py; or baby_graph | sports_graph | clothing_graph, the real
  interaction graphs in ../shared/data (x_label split) with seeded synthetic
  features, for the ID-only models. Build those once with e.g.

    python -m data_prep convert --src ../shared/data/baby \
        --out data/baby_graph.npz --synth-features 0 --synth-dims 8 8

Training settings are MMRec's overall.yaml (lr 1e-3, batch 2048, Adam,
patience 20 on valid Recall@20), and full-ranking scores come from a clean
forward pass with the current parameters (`full_sort_predict`). Model
settings are cells of MMRec's model yaml grids (MMRec picks, per dataset,
the cell with the best test Recall@20; no search is done here):

* mfbpr (BPR.yaml, reg_weight in {2, 1, 0.1, 1e-2, 1e-3, 1e-4, 1e-5}):
  reg_weight 1e-3.
* lightgcn (LightGCN yaml, n_layers in {1, 2, 3, 4}, reg_weight in
  {1e-2, ..., 1e-6}): n_layers 3, reg_weight 1e-4 (LightGCN paper defaults).
* freedom (FREEDOM.yaml: knn_k 10, mm_image_weight 0.1, n_mm_layers 1,
  n_ui_layers 2, feat_embed_dim 64; dropout in {0.8, 0.9}, reg_weight in
  {0, 1e-5, 1e-4, 1e-3}): dropout 0.8, reg_weight 1e-3.
* vbpr (VBPR.yaml, reg_weight in {2, 1, 0.1, 1e-2, 1e-3, 1e-4, 1e-5}):
  reg_weight 1e-3 (as mfbpr: the same grid and loss form).
* bm3 (BM3.yaml: cl_weight 2.0, no negatives; n_layers in {1, 2},
  reg_weight in {0.1, 0.01}, dropout in {0.3, 0.5}): the grid's first
  cell, n_layers 1, reg_weight 0.1, dropout 0.3.
* lgmrec (LGMRec.yaml: cf_model lightgcn, n_ui_layers 2, n_mm_layers 2,
  cl_weight 1e-4, reg_weight 1e-6, feat_embed_dim 64; the yaml's active
  (Baby) cell n_hyper_layer 1, hyper_num 4, keep_rate 0.5, alpha 0.3; its
  comments give Sports 1/4/0.4/0.6 and Clothing 2/64/0.2/0.2).
* mmgcn (MMGCN.yaml, reg_weight in {0, 1e-5, 1e-4, 1e-3, 1e-2, 0.1},
  learning_rate in {1e-4, 5e-4, 1e-3, 5e-3, 1e-2}): reg_weight 1e-3, lr
  1e-3. The regularizer has no gradient upstream (its tensors are never
  trained), so reg_weight only shifts the logged loss. Ranks the last
  training forward's embeddings, as MMRec's `self.result`.
* lattice (LATTICE.yaml: knn_k 10, lambda_coeff 0.9, n_layers 1,
  weight_size [64, 64] -> n_ui_layers 2, feat_embed_dim 64, cf_model
  lightgcn; reg_weight in {0, 1e-5, 1e-4, 1e-3}, learning_rate in
  {1e-4, 5e-4, 1e-3, 5e-3}): reg_weight 1e-4, lr 1e-3, and its
  learning_rate_scheduler [0.96, 50]. The item graph is built in each
  epoch's first step (with gradient) and reused, detached, in the others.

Override any of them, e.g. --config.reg_weight=1e-2.
"""

import importlib
import pathlib

from mentor_jax import config_spec
from mentor_jax import registry

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2].parent / (
    'shared/data')

MODELS = ('mfbpr', 'lightgcn', 'freedom', 'vbpr', 'bm3', 'lgmrec',
          'mmgcn', 'lattice', 'mentor')
DATASETS = ('baby', 'sports', 'clothing', 'tiktok', 'baby_graph',
            'sports_graph', 'clothing_graph')

_MODEL_SETTINGS = {
    'mfbpr': dict(reg_weight=1e-3),
    'lightgcn': dict(reg_weight=1e-4, n_layers=3),
    'freedom': dict(reg_weight=1e-3, dropout=0.8, n_ui_layers=2,
                    n_mm_layers=1, knn_k=10, mm_image_weight=0.1,
                    feat_embed_dim=64),
    'vbpr': dict(reg_weight=1e-3),
    'bm3': dict(n_layers=1, reg_weight=0.1, dropout=0.3, cl_weight=2.0),
    'lgmrec': dict(cf_model='lightgcn', n_ui_layers=2, n_mm_layers=2,
                   n_hyper_layer=1, hyper_num=4, keep_rate=0.5, alpha=0.3,
                   cl_weight=1e-4, reg_weight=1e-6, feat_embed_dim=64,
                   score_gumbel=True),
    'mmgcn': dict(reg_weight=1e-3, eval_embeddings='last_step'),
    'lattice': dict(reg_weight=1e-4, knn_k=10, lambda_coeff=0.9, n_layers=1,
                    n_ui_layers=2, feat_embed_dim=64,
                    graph_block_size=1024,
                    learning_rate_scheduler=(0.96, 50)),
}


def get_config(arg: str = 'lightgcn,baby'):
  """Config for `MODEL,DATASET` (see the module docstring)."""
  model, _, dataset = arg.partition(',')
  if model not in MODELS or dataset not in DATASETS:
    raise ValueError(f'configs/baseline.py:{arg}: expected MODEL,DATASET with '
                     f'MODEL in {MODELS} and DATASET in {DATASETS}')
  graph_only = dataset.endswith('_graph')
  base_name = dataset.removesuffix('_graph')
  config = importlib.import_module(
      f'mentor_jax.configs.{base_name}').get_config()
  if graph_only:
    config.dataset = dataset
    config.data_npz = f'data/{dataset}.npz'
    config.data_source = ''  # Built by hand: the folder has no features.
  if model == 'mentor':
    return config
  config.model = model
  # overall.yaml: MMRec's training and model-selection settings.
  config.learning_rate = 1e-3
  config.train_batch_size = 2048
  config.stopping_step = 20
  config.valid_metric = 'recall@20'
  config.eval_embeddings = 'recompute'
  for key, value in _MODEL_SETTINGS[model].items():
    config[key] = value
  # MENTOR's own settings (and its grid) would be ignored by this model:
  # drop them, so that overriding one is an error, not a silent no-op.
  family_keys = registry.get(model).config_spec
  for key in list(config.keys()):
    if key not in config_spec.TRAINER and key not in family_keys:
      del config[key]
  return config
