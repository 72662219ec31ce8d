"""MMRec baselines (MF-BPR, LightGCN, FREEDOM) on any dataset config.

  python -m mentor_jax.train --config configs/baseline.py:lightgcn,baby \
      --workdir runs/lightgcn_baby

The argument is `MODEL,DATASET`:

* MODEL: mfbpr | lightgcn | freedom (| mentor, which is configs/DATASET.py).
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

Override any of them, e.g. --config.reg_weight=1e-2.
"""

import importlib
import pathlib

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / (
    'shared/data')

MODELS = ('mfbpr', 'lightgcn', 'freedom', 'mentor')
DATASETS = ('baby', 'sports', 'clothing', 'tiktok', 'baby_graph',
            'sports_graph', 'clothing_graph')

_MODEL_SETTINGS = {
    'mfbpr': dict(reg_weight=1e-3),
    'lightgcn': dict(reg_weight=1e-4, n_layers=3),
    'freedom': dict(reg_weight=1e-3, dropout=0.8, n_ui_layers=2,
                    n_mm_layers=1, knn_k=10, mm_image_weight=0.1,
                    feat_embed_dim=64),
}


def get_config(arg: str = 'lightgcn,baby'):
  """Config for `MODEL,DATASET` (see the module docstring)."""
  model, _, dataset = arg.partition(',')
  if model not in MODELS or dataset not in DATASETS:
    raise ValueError(f'configs/baseline.py:{arg}: expected MODEL,DATASET with '
                     f'MODEL in {MODELS} and DATASET in {DATASETS}')
  graph_only = dataset.endswith('_graph')
  base_name = dataset.removesuffix('_graph')
  config = importlib.import_module(f'configs.{base_name}').get_config()
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
  return config
