"""What a stopped run of a stack costs (CPU, one run at a time): an epoch of
K runs with every run active, against the same with some stopped.

  python bench/stack_skip.py --config tiktok --model lightgcn --runs 4 \
      --stopped 2 --reps 5

Since the halving change a stopped run is skipped (`stack.over_runs`);
before it, the stack computed it and threw the result away. Prints the
median epoch seconds of each case and their ratio (the expected ratio is
(K - stopped) / K).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax

from mentor_jax import datasets
from mentor_jax import stack
from mentor_jax import study


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='tiktok')
  parser.add_argument('--model', default='lightgcn')
  parser.add_argument('--runs', type=int, default=4)
  parser.add_argument('--stopped', type=int, default=2)
  parser.add_argument('--reps', type=int, default=5)
  args = parser.parse_args()
  config = study.load_dataset_config(args.config, args.model)
  config.seeds = tuple(range(args.runs))
  runs = stack.StackedRuns(config, datasets.load_for_config(config))
  state = runs.state
  runs.compile(state)
  cases = {'all active': [True] * args.runs,
           f'{args.stopped} stopped': [k >= args.stopped
                                       for k in range(args.runs)]}
  times = {name: [] for name in cases}
  for _ in range(args.reps):  # the cases in turn, so that load hits both
    for name, active in cases.items():
      t0 = time.perf_counter()
      state, _, scores = runs.run_epoch(state, active)
      jax.block_until_ready((state, scores))
      times[name].append(time.perf_counter() - t0)
  medians = {name: statistics.median(t) for name, t in times.items()}
  for name, t in times.items():
    print(f'{name}: median {medians[name]:.3f} s/epoch over {len(t)} '
          f'({", ".join(f"{x:.3f}" for x in t)})')
  first, second = medians.values()
  print(f'ratio {second / first:.3f} (expected '
        f'{(args.runs - args.stopped) / args.runs:.3f}); '
        f'{jax.devices()[0].platform}, {args.model} on {args.config}, '
        f'{args.runs} runs')
  return 0


if __name__ == '__main__':
  sys.exit(main())
