"""The settings every config starts from: the trainer's, then the model's.

  python -m mentor_jax.train --config configs/base.py:lightgcn \
      --config.data_npz=data/mine.npz --config.data_source=

Names follow MMRec's configs (overall.yaml and model/<Model>.yaml) wherever
one exists, so that a parity check is a mechanical comparison. The model's
keys and defaults come from its family (`registry`), in one place; a
dataset config (configs/<dataset>.py) takes the model as its argument and
sets the data section and trainer settings only.
"""

import ml_collections

from mentor_jax import registry


def trainer_config() -> ml_collections.ConfigDict:
  """The trainer's settings, shared by every model (no model keys)."""
  config = ml_collections.ConfigDict()

  # Data. `data_npz` is the prepared file; when it is missing, `data_source`
  # says how to build it: 'synth:<preset>' (generated, seeded) or the path of
  # an MMRec-format folder. '' means "prepare it yourself" (the error says how).
  config.dataset = 'small'
  config.data_npz = 'data/small.npz'
  config.data_source = 'synth:small'
  config.v_feat_file = 'image_feat.npy'
  config.t_feat_file = 'text_feat.npy'
  config.model = 'mentor'
  # Neighbours per item of the item-item kNN lists (MENTOR.yaml and the
  # feature models' yamls: 10; the .npz stores 40).
  config.knn_k = 10

  # Optimizer and schedule (MMRec's overall.yaml; a model may change them,
  # e.g. MENTOR.yaml's learning rate 1e-4).
  config.learning_rate = 1e-3
  # [factor, every]: epoch e trains with learning_rate * factor**(e / every);
  # overall.yaml's [1.0, 50] is a constant rate.
  config.learning_rate_scheduler = (1.0, 50)
  config.train_batch_size = 2048
  config.epochs = 1000
  config.stopping_step = 20
  config.seed = 999
  # Several runs as one compiled program (mentor_jax/stack.py): seeds, e.g.
  # (0, 1, 2), and a sweep of continuous settings, e.g.
  # 'mask_weight_g=1e-4,1e-3;temp=0.2,0.4' (the product, times the seeds).
  config.seeds = ()
  config.sweep = ''
  # Runs of a stack computed at once inside its program: 'auto' = one at a
  # time on a CPU (one run fills the cores; bench/RESULTS.md section 14),
  # all of them (one vmap) on a GPU/TPU; or 'all' / a count such as '2'.
  config.stack_parallel = 'auto'
  # Runs of a stack (their indices) that train no further: successive
  # halving (mentor-study --search halving) freezes the worse half of its
  # cells this way; a frozen run keeps its best epoch, as an early stop.
  config.freeze_runs = ()

  # Evaluation (overall.yaml): model selection on valid Recall@20 (MENTOR's
  # own overall.yaml: Recall@10); metrics are rounded to 4 decimals before
  # the comparison, as MMRec does.
  config.valid_metric = 'recall@20'
  config.topk = (5, 10, 20, 50)
  config.eval_batch_size = 4096
  # 'recompute': one clean forward pass with the current parameters
  # (MMRec's `full_sort_predict`). 'last_step': the embeddings of the
  # epoch's last training forward pass, one optimizer step stale (the
  # official MENTOR, MMGCN's `self.result`).
  config.eval_embeddings = 'recompute'

  # Engineering knobs; none of them changes results beyond float rounding.
  config.spmm_kernel = 'auto'  # 'auto' | 'csr' | 'bcoo' | 'segment_sum'
  # JAX's persistent compilation cache (mentor_jax/compilation_cache.py):
  # 'auto' ($MENTOR_JAX_COMPILE_CACHE, else ~/.cache/mentor_jax/xla), a
  # folder, or 'off'.
  config.compile_cache = 'auto'

  # Scale-out (mentor_jax/distributed.py, mesh.py; README "Several devices
  # and hosts"). 'auto': one 'data' axis over every device of every process;
  # an int n uses the first n devices (single host only).
  config.mesh_shape = 'auto'
  # Split the model's user/item tables (its `table_params`), the item
  # features and their Adam moments by rows over the devices; False
  # replicates.
  config.shard_tables = False
  # Multi-host: '' / 0 / -1 fall back to JAX_COORDINATOR_ADDRESS,
  # JAX_NUM_PROCESSES, JAX_PROCESS_ID; one process needs none of them.
  config.coordinator_address = ''
  config.num_processes = 0
  config.process_id = -1

  # Bookkeeping.
  config.log_every_epochs = 1
  # Checkpoints (mentor_jax/checkpointing.py): the latest state every n
  # epochs (and on the last epoch, early stop or SIGINT/SIGTERM) under
  # <workdir>/checkpoints/latest; the best epoch always under .../best.
  config.checkpoint_every_epochs = 1
  # A resume whose dataset differs in content (same shapes) from the one the
  # checkpoint was trained on is refused unless this is True.
  config.resume_other_data = False
  return config


def get_config(model: str = 'mentor') -> ml_collections.ConfigDict:
  """`model` with its defaults on the default data (configs/small.py's).

  The trainer's settings, then the model's own keys and defaults and the
  trainer settings it changes, all from its family
  (`ModelFamily.config_defaults`): MENTOR's are the official code's
  (MENTOR.yaml, MENTOR_SPEC §3), the baselines' their MMRec yaml's.
  """
  config = trainer_config()
  family = registry.get(model)
  config.model = family.name
  for key, value in family.config_defaults().items():
    config[key] = (ml_collections.ConfigDict(value) if isinstance(value, dict)
                   else value)
  return config


def on_dataset(config: ml_collections.ConfigDict,
               name: str) -> ml_collections.ConfigDict:
  """`config` for dataset `name`: its model's settings for that dataset
  (`ModelFamily.dataset_defaults`, e.g. DiffMM's README commands)."""
  for key, value in registry.get(config.model).dataset_defaults.get(
      name, {}).items():
    config[key] = value
  return config


def amazon_config(name: str, model: str = 'mentor', *,
                  synthetic: bool = False) -> ml_collections.ConfigDict:
  """An Amazon dataset (baby, sports, clothing) for `model`.

  Args:
    name: the MMRec dataset name.
    model: the model (`config.model`), with its defaults.
    synthetic: use the seeded synthetic dataset of the same shape (built on
      first use) instead of the real one, which users download (README).
  """
  config = get_config(model)
  config.dataset = f'synth_{name}' if synthetic else name
  config.data_npz = f'data/{config.dataset}.npz'
  # For the real data, set this to the downloaded MMRec folder to convert it
  # on first use.
  config.data_source = f'synth:{name}' if synthetic else ''
  return on_dataset(config, name)
