"""Step time of the sharded trainer on 1, 2, 4 and 8 devices.

  python bench/bench_scaling.py                      # tiny config, CPU
  python bench/bench_scaling.py --config small --epochs 3 --devices 1,2,4,8

One subprocess per device count N. On CPU it forces N host devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N, which must be set before
jax is imported, hence the subprocesses): that checks correctness (the loss
must not depend on N) and measures the partitioning overhead, not a speed-up,
since the "devices" share the same cores. On a GPU/TPU host the first N real
devices are used and the speed-up is real. Counts above the number of
devices are skipped.

Each run compiles and runs one warm-up epoch, then times `--epochs` whole
epochs (all optimizer steps of an epoch are one compiled `lax.scan`) and
reports the median time per optimizer step.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


# jax is imported inside `child`, after XLA_FLAGS is set.
# pylint: disable=import-outside-toplevel


def child(args: argparse.Namespace) -> None:
  """Runs in a fresh process: builds the mesh of N devices and times it."""
  if args.platform == 'cpu':
    os.environ['XLA_FLAGS'] = (
        f'--xla_force_host_platform_device_count={args.child}')
    os.environ['JAX_PLATFORMS'] = 'cpu'
  import jax
  import numpy as np
  from mentor_jax import data as data_lib
  from mentor_jax import datasets
  from mentor_jax import distributed
  from mentor_jax import epoch as epoch_lib
  from mentor_jax import mesh as mesh_lib

  n = args.child
  if n > len(jax.devices()):
    print(json.dumps({'devices': n, 'skipped': True}))
    return
  config = importlib.import_module(f'configs.{args.config}').get_config()
  if args.batch_size:
    config.train_batch_size = args.batch_size
  config.infonce_impl = 'sharded' if n > 1 else 'fused'
  config.shard_tables = args.shard_tables
  dataset = datasets.load_for_config(config)
  family, hp, data, graphdef, rest, state = epoch_lib.setup(config, dataset)
  # A Runner over n devices; with n = 1 it is inactive (the plain trainer).
  runner = distributed.Runner(mesh_lib.make_mesh(n), args.shard_tables)
  state, rest, data = runner.place(state, rest, data, family.table_params)
  n_steps = data_lib.steps_per_epoch(dataset.n_train, hp.batch_size)
  t0 = time.perf_counter()
  run_epoch = runner.compile_epoch(state, rest, data, graphdef=graphdef,
                                   family=family, hp=hp)

  def epoch(state):
    state, parts, _ = run_epoch(state, rest, data, n_steps=n_steps)
    jax.block_until_ready(state)
    return state, parts

  state, parts = epoch(state)  # Compile + warm-up.
  first_loss = float(sum(np.asarray(v)[0] for v in parts.values()))
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(args.epochs):
    t0 = time.perf_counter()
    state, _ = epoch(state)
    times.append(time.perf_counter() - t0)
  print(json.dumps({
      'devices': n, 'platform': jax.devices()[0].platform,
      'steps': n_steps * args.epochs,
      'step_ms': 1e3 * float(np.median(times)) / n_steps,
      'compile_s': compile_s, 'first_loss': first_loss}))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='tiny',
                      help='module under configs/ (tiny, small, tiktok, ...)')
  parser.add_argument('--devices', default='1,2,4,8')
  parser.add_argument('--epochs', type=int, default=5,
                      help='timed epochs after the warm-up epoch')
  parser.add_argument('--batch_size', type=int, default=0,
                      help='0: the config value (must split over devices)')
  parser.add_argument('--shard_tables', action='store_true')
  parser.add_argument('--platform', default='cpu', choices=('cpu', 'native'),
                      help="'cpu': forced host devices; 'native': the "
                      "machine's own GPU/TPU devices")
  parser.add_argument('--child', type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args)
    return

  rows = []
  for n in [int(x) for x in args.devices.split(',')]:
    cmd = [sys.executable, __file__, '--child', str(n)] + [
        a for a in sys.argv[1:]]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop('XLA_FLAGS', None)
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                         text=True, check=False)
    if out.returncode:
      sys.exit(f'N={n} failed:\n{out.stderr[-3000:]}')
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
  base = next((r['step_ms'] for r in rows if not r.get('skipped')), None)
  print(f'config={args.config} shard_tables={args.shard_tables}')
  print('devices  platform  step_ms  speed-up  compile_s  first_loss')
  for r in rows:
    if r.get('skipped'):
      print(f'{r["devices"]:7d}  (skipped: not enough devices)')
      continue
    print(f'{r["devices"]:7d}  {r["platform"]:8s}  {r["step_ms"]:7.2f}  '
          f'{base / r["step_ms"]:8.2f}  {r["compile_s"]:9.1f}  '
          f'{r["first_loss"]:.6f}')


if __name__ == '__main__':
  main()
