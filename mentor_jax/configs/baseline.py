"""A model on a dataset, as `MODEL,DATASET` (the form earlier commands use).

  python -m mentor_jax.train --config configs/baseline.py:lightgcn,baby \
      --workdir runs/lightgcn_baby

is `configs/baby.py:lightgcn`: MODEL is any `config.model`, DATASET the name
of a dataset config (configs/DATASET.py: tiny, small, baby, sports,
clothing, tiktok, synth_baby, ...) or baby_graph | sports_graph |
clothing_graph: the real interaction graphs in ../shared/data (x_label
split) with seeded synthetic features, for the ID-only models. Build those
once with e.g.

    python -m data_prep convert --src ../shared/data/baby \
        --out data/baby_graph.npz --synth-features 0 --synth-dims 8 8

A model's settings are its family's defaults (`ModelFamily.defaults`, in
mentor_jax/models/): for the MMRec baselines, MMRec's overall.yaml (lr 1e-3,
batch 2048, Adam, patience 20 on valid Recall@20, full-ranking scores from a
clean forward pass, as `full_sort_predict`) and one cell of the model's
yaml grid (MMRec picks, per dataset, the cell with the best test Recall@20;
no search is done here). Override any of them, e.g. --config.reg_weight=1e-2.
"""

import importlib

from mentor_jax import registry

GRAPH_DATASETS = ('baby_graph', 'sports_graph', 'clothing_graph')


def get_config(arg: str = 'lightgcn,baby'):
  """Config for `MODEL,DATASET` (see the module docstring)."""
  model, _, dataset = arg.partition(',')
  base_name = dataset.removesuffix('_graph')
  try:
    registry.get(model)
    module = importlib.import_module(f'mentor_jax.configs.{base_name}')
    if not dataset or base_name in ('base', 'baseline', 'paper', 'ablation'):
      raise ModuleNotFoundError(dataset)
  except (ValueError, ModuleNotFoundError):
    raise ValueError(
        f'configs/baseline.py:{arg}: expected MODEL,DATASET with MODEL in '
        f'{registry.names()} and DATASET a dataset config (configs/'
        f'DATASET.py) or one of {GRAPH_DATASETS}') from None
  config = module.get_config(model)
  if dataset in GRAPH_DATASETS:
    config.dataset = dataset
    config.data_npz = f'data/{dataset}.npz'
    config.data_source = ''  # Built by hand: the folder has no features.
  return config


def config_arg_for_model(arg: str, model: str) -> str:
  """The argument that builds this config's dataset for `model`."""
  return f'{model},{arg.partition(",")[2]}'
