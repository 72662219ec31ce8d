"""The cost of watching an epoch: segments against one program.

  python bench/bench_progress.py --config configs/synth_baby.py \
      --data-npz /work/bench_data/synth_baby.npz --steps 6 --reps 5

The trainer runs an epoch as its begin program and `epoch.SEGMENTS`
segments of steps (at most one per step), all dispatched at once, and waits
for each segment's end to move the progress bar (`epoch.run_epoch`). This
times the same compiled programs two ways, interleaved A/B after one
warm-up each: every step its own segment, the host waiting on each (what
the trainer does with a bar), and the whole epoch as one segment. It
reports the median step time of each and the overhead per step, and checks
that both give the same bits.
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
  segments = {'per_step': n_steps, 'whole': 1}
  states = {name: jax.tree.map(lambda x: x.copy(), state)
            for name in segments}
  times = {name: [] for name in segments}
  outputs = {}
  seen = []
  for rep in range(args.reps + 1):
    order = list(segments) if rep % 2 else list(segments)[::-1]
    for name in order:
      epoch_lib.SEGMENTS = segments[name]
      t0 = time.perf_counter()
      states[name], parts, scores = compiled(
          states[name], rest, data, n_steps=n_steps,
          on_progress=seen.append)
      jax.block_until_ready((states[name], parts, scores))
      dt = time.perf_counter() - t0
      if rep:  # rep 0: warm-up
        times[name].append(dt / n_steps)
      outputs[name] = jax.device_get((parts, scores))
      print(rep, name, f'{dt / n_steps:.4f} s/step', flush=True)
  same = all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(outputs['per_step']), jax.tree.leaves(outputs['whole'])))
  med = {name: float(np.median(v)) for name, v in times.items()}
  print(json.dumps({
      'steps': n_steps, 'step_s_per_step_segments': med['per_step'],
      'step_s_one_segment': med['whole'],
      'overhead_ms_per_step': 1e3 * (med['per_step'] - med['whole']),
      'overhead_pct': 100 * (med['per_step'] / med['whole'] - 1),
      'same_bits': same, 'per_step': times['per_step'],
      'whole': times['whole']}))


if __name__ == '__main__':
  main()
