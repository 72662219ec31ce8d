"""The cost of watching an epoch: segments of steps, short and long.

  python bench/bench_progress.py --config configs/synth_baby.py \
      --data-npz /work/bench_data/synth_baby.npz --steps 12 --reps 4

The trainer runs an epoch as its begin program, its first step alone
(timed), then the other steps in segments of about `epoch.SEGMENT_S`
seconds, all dispatched at once, waiting for each segment's end to move
the progress bar (`epoch.run_epoch`). This times the same compiled programs
three ways, interleaved after one warm-up each: every step its own segment
(SEGMENT_S = 0), the trainer's plan, and the first step then the rest as
one segment. From the step times and the segment counts it reports the
cost of one segment (a program launch) and the trainer's overhead over
one segment; it checks that all three give the same bits.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench import bench_train  # pylint: disable=g-import-not-at-top
from bench import common  # pylint: disable=g-import-not-at-top
from mentor_jax import datasets  # pylint: disable=g-import-not-at-top
from mentor_jax import epoch as epoch_lib  # pylint: disable=g-import-not-at-top


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/synth_baby.py')
  parser.add_argument('--data-npz', default='')
  parser.add_argument('--steps', type=int, default=6,
                      help='steps per program (a seeded subset of rows)')
  parser.add_argument('--reps', type=int, default=5)
  args = parser.parse_args()
  print(json.dumps(common.environment()))
  overrides = {'data_npz': args.data_npz} if args.data_npz else {}
  config = bench_train.load_config(args.config, overrides)
  dataset = datasets.load_for_config(config)
  family, hp, data, graphdef, rest, state = epoch_lib.setup(config, dataset)
  if args.steps * hp.batch_size < dataset.n_train:
    rows = np.sort(np.random.default_rng(0).choice(
        dataset.n_train, args.steps * hp.batch_size, replace=False))
    data = data._replace(train_user=data.train_user[rows],
                         train_item=data.train_item[rows])
  n_steps = epoch_lib.n_steps_of(family, data, hp)
  compiled = epoch_lib.compile_epoch(state, rest, data, graphdef=graphdef,
                                     family=family, hp=hp)
  epoch_lib.release_freed_host_memory()
  print(f'compiled in {compiled.compile_s:.1f}s; {n_steps} steps',
        flush=True)
  plans = {'per_step': 0.0, 'trainer': epoch_lib.SEGMENT_S, 'whole': 1e9}
  states = {name: jax.tree.map(lambda x: x.copy(), state) for name in plans}
  times = {name: [] for name in plans}
  launches = {}
  outputs = {}
  for rep in range(args.reps + 1):
    order = list(plans) if rep % 2 else list(plans)[::-1]
    for name in order:
      epoch_lib.SEGMENT_S = plans[name]
      seen = []
      t0 = time.perf_counter()
      states[name], parts, scores = compiled(
          states[name], rest, data, n_steps=n_steps, on_progress=seen.append)
      jax.block_until_ready((states[name], parts, scores))
      dt = time.perf_counter() - t0
      launches[name] = len(seen)  # The timed first step, then segments.
      if rep:  # rep 0: warm-up
        times[name].append(dt / n_steps)
      outputs[name] = jax.device_get((parts, scores))
      print(rep, name, f'{dt / n_steps:.4f} s/step, {len(seen)} launches',
            flush=True)
  leaves = {n: jax.tree.leaves(o) for n, o in outputs.items()}
  same = all(np.array_equal(a, b) for name in ('trainer', 'whole')
             for a, b in zip(leaves['per_step'], leaves[name]))
  med = {name: float(np.median(v)) for name, v in times.items()}
  per_launch = ((med['per_step'] - med['whole']) * n_steps
                / (launches['per_step'] - launches['whole']))
  print(json.dumps({
      'steps': n_steps, 'launches': launches,
      'step_s': med, 'one_launch_s': per_launch,
      'trainer_overhead_pct': 100 * (med['trainer'] / med['whole'] - 1),
      'per_step_overhead_pct': 100 * (med['per_step'] / med['whole'] - 1),
      'same_bits': same, 'times': times}))


if __name__ == '__main__':
  main()
