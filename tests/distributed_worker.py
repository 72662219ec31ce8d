"""Subprocess helper of tests/test_distributed.py (not collected by pytest).

XLA_FLAGS (the forced host device count) must be set before jax is imported,
so every multi-device run happens in a fresh process:

  python tests/distributed_worker.py step N_DEV VARIANT NPZ OUT.npz
      one training step (loss parts, gradients, updated parameters) and the
      valid/test metrics of single-device and sharded evaluation; VARIANT
      is MENTOR's 'default' or 'light' or another model's name (with
      shard_tables on more than one device, as 'light').
  python tests/distributed_worker.py train N_PROC PROC_ID PORT NPZ WORKDIR
      a short tiny-config training run, one process of a jax.distributed job.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tiny_config(npz: str, variant: str):
  """MENTOR ('default', 'light') or another model (its name) on tiny."""
  from configs import tiny
  config = tiny.get_config(variant if variant not in ('default', 'light')
                           else 'mentor')
  config.data_npz = npz
  config.data_source = ''
  config.spmm_kernel = 'segment_sum'
  if variant == 'light':
    config.mask_weight_g = 0.0
  elif variant == 'default':
    # A larger weight than the default so the InfoNCE gradient is visible.
    config.mask_weight_g = 0.1
  return config


# pylint: disable=import-outside-toplevel


def step(n_dev: int, variant: str, npz: str, out: str) -> None:
  import jax
  import numpy as np
  from flax import nnx
  from mentor_jax import data as data_lib
  from mentor_jax import distributed
  from mentor_jax import epoch as epoch_lib
  from mentor_jax import mesh as mesh_lib
  from mentor_jax import metrics as metrics_lib

  assert len(jax.devices()) == n_dev, jax.devices()
  config = _tiny_config(npz, variant)
  # One step covers every training row; 512 splits over 1, 2, 4, 8 devices.
  config.train_batch_size = 512
  if n_dev > 1:
    if 'infonce_impl' in config:
      config.infonce_impl = 'sharded'
    config.shard_tables = variant != 'default'
  dataset = data_lib.load_dataset(npz)
  family, hp, data, graphdef, rest, state = epoch_lib.setup(config, dataset)
  runner = distributed.Runner(mesh_lib.make_mesh(n_dev),
                              config.shard_tables)
  state, rest, data = runner.place(state, rest, data, family.table_params)
  # Which parameters are split by rows over the devices.
  split = sorted(jax.tree_util.keystr(k) for k, v in
                 jax.tree_util.tree_leaves_with_path(state.params)
                 if not v.sharding.is_fully_replicated)

  # Gradients of the first step, as an epoch computes them.
  def grads_fn(params, rest, data, key):
    _, epoch_key = jax.random.split(key)
    batch_key, _, steps_key = jax.random.split(epoch_key, 3)
    batches = mesh_lib.constrain_batch(data_lib.epoch_batches(
        batch_key, data, hp.batch_size, hp.max_row_len))
    batch = jax.tree.map(lambda x: x[0], batches)
    def loss(p):
      return family.loss(nnx.merge(graphdef, p, rest), data, batch,
                         jax.random.fold_in(steps_key, 0), hp)[0]
    return jax.grad(loss)(params)

  with jax.set_mesh(runner.mesh):
    grads = jax.jit(grads_fn, out_shardings=runner.replicated)(
        state.params, rest, data, state.key)
  compiled = runner.compile_epoch(state, rest, data, graphdef=graphdef,
                                  family=family, hp=hp)
  new_state, parts, scores = compiled(state, rest, data, n_steps=1)
  single = metrics_lib.Evaluator.for_config(dataset, config)(*scores)
  sharded = runner.evaluator(dataset, config, None)
  sharded = single if sharded is None else sharded(*scores)

  flat = lambda prefix, tree: {
      prefix + jax.tree_util.keystr(k): np.asarray(v)
      for k, v in jax.tree_util.tree_leaves_with_path(tree)}
  arrays = {**flat('grad', grads), **flat('param', new_state.params),
            **{f'loss_{k}': np.asarray(v) for k, v in parts.items()}}
  assert int(new_state.step) == 1
  np.savez(out, **arrays)
  pathlib.Path(out + '.json').write_text(json.dumps(
      {'single': single, 'sharded': sharded, 'split': split}))


def train_run(n_proc: int, proc_id: int, port: int, npz: str,
              workdir: str) -> None:
  from mentor_jax import train
  config = _tiny_config(npz, 'default')
  config.epochs = 2
  config.coordinator_address = f'localhost:{port}'
  config.num_processes = n_proc
  config.process_id = proc_id
  config.infonce_impl = 'sharded'
  train.train_and_evaluate(config, workdir)


def main(argv: list[str]) -> None:
  sys.path.insert(0, str(REPO))
  mode = argv[1]
  if mode == 'step':
    n_dev = int(argv[2])
    os.environ['XLA_FLAGS'] = (
        f'--xla_force_host_platform_device_count={n_dev}')
    step(n_dev, argv[3], argv[4], argv[5])
  elif mode == 'train':
    os.environ.pop('XLA_FLAGS', None)  # One CPU device per process.
    train_run(int(argv[2]), int(argv[3]), int(argv[4]), argv[5], argv[6])
  else:
    raise SystemExit(f'unknown mode {mode!r}')


if __name__ == '__main__':
  main(sys.argv)
