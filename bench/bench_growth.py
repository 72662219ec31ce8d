"""How step time and peak memory grow with the number of users.

Synthetic Clothing-shaped datasets at 1/4, 1/2, 1 and 2 x Clothing's users
(`data_prep synth --preset clothing --scale s`: users and interactions are
scaled, the 23,033 items and the 4096/384-d features are not), each trained
with the full objective and the light variant (mask_weight_g = 0: no
graph-perturbation InfoNCE, no noise encoders).

A full Clothing epoch on a 2-core CPU takes about half an hour, so each
workload times a short N-step program over a random subset of training rows
(`bench_train.py --steps`, see its docstring): the step does the same work as
in a full epoch. The epoch column is step time x full-epoch steps and is
EXTRAPOLATED. Each workload runs in a fresh subprocess (its own peak RSS).

  python bench/bench_growth.py --data-dir /work/bench_data
  python bench/bench_growth.py --scales 0.25,0.5 --variants light --steps 4

Missing datasets are generated into --data-dir first (about 1-5 min each on
a 2-core CPU; the 2x one holds ~0.5 GB of features plus the graphs).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench import common  # pylint: disable=g-import-not-at-top
from bench import bench_train  # pylint: disable=g-import-not-at-top


def dataset_npz(data_dir: pathlib.Path, preset: str,
                scale: float) -> pathlib.Path:
  """Path of the scaled dataset's .npz; generates it if missing."""
  tag = f'{preset}_x{scale:g}'
  npz = data_dir / f'synth_{tag}.npz'
  if not npz.exists():
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, '-m', 'data_prep', 'synth', '--preset', preset,
           '--scale', f'{scale:g}', '--out', str(data_dir / tag),
           '--name', preset, '--npz', str(npz)]
    print('# generating: ' + ' '.join(cmd), flush=True)
    subprocess.run(cmd, cwd=common.REPO, check=True)
  return npz


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--preset', default='clothing')
  p.add_argument('--config', default='configs/synth_clothing.py')
  p.add_argument('--scales', default='0.25,0.5,1,2')
  p.add_argument('--variants', default='full,light')
  p.add_argument('--steps', type=int, default=2,
                 help='steps per timed program')
  p.add_argument('--reps', type=int, default=1,
                 help='timed programs per workload (after one untimed)')
  p.add_argument('--time-first', action='store_true',
                 help='time the first run after compile and no other '
                 '(set --reps 0); for a heavily loaded CPU, labelled so')
  p.add_argument('--eval-reps', type=int, default=1,
                 help='timed full evaluations (0: skip evaluation)')
  p.add_argument('--data-dir', type=pathlib.Path, default=pathlib.Path(
      os.environ.get('BENCH_DATA', common.REPO / 'data' / 'bench')))
  p.add_argument('--timeout', type=float, default=3600)
  p.add_argument('--out')
  p.add_argument('--echo', action='store_true')
  args = p.parse_args()

  env = common.print_environment()
  scales = [float(s) for s in args.scales.split(',')]
  npzs = {s: dataset_npz(args.data_dir, args.preset, s) for s in scales}
  results = []
  rows = []
  # Variants interleaved within each scale, so drift hits both alike.
  for s in scales:
    for v in args.variants.split(','):
      spec = {'config': args.config, 'overrides': {}, 'variant': v,
              'data_npz': str(npzs[s]), 'steps': args.steps, 'warmup': 0,
              'epochs_timed': args.reps, 'time_first': args.time_first,
              'eval_reps': args.eval_reps,
              'skip_eval': args.eval_reps == 0}
      r = bench_train.run_variant(spec, timeout_s=args.timeout,
                                  echo=args.echo)
      r['spec'], r['scale'] = spec, s
      results.append(r)
      print(bench_train.describe(r), flush=True)
      rows.append(_row(s, v, r))
  print('\n' + _table(rows))
  out = pathlib.Path(args.out) if args.out else (
      common.default_out_dir() / f'growth_{args.preset}.json')
  common.write_json(out, {'env': env, 'argv': sys.argv, 'results': results})
  print(f'# wrote {out}')


def _row(scale: float, variant: str, r: dict[str, Any]) -> list[str]:
  if 'error' in r:
    return [f'{scale:g}', variant, 'FAILED', '', '', '', '', '', '']
  step = r['step_s']
  epoch = r.get('epoch_s_extrapolated', (r.get('epoch_s') or {}).get('median'))
  ev = r.get('eval_s', {}).get('median')
  return [f'{scale:g}', variant, f"{r['n_users']:,}", f"{r['n_train']:,}",
          f"{step['median']:.2f}", f'{epoch:.0f}',
          '-' if ev is None else f'{ev:.2f}', f"{r['peak_rss_gib']:.2f}",
          f"{r['loadavg_before'][0]:.1f}"]


def _table(rows: list[list[str]]) -> str:
  head = ['scale', 'variant', 'users', 'train rows', 'step s',
          'epoch s (extrap.)', 'eval s', 'peak RSS GiB', 'load']
  lines = ['| ' + ' | '.join(head) + ' |',
           '|' + '|'.join('---' for _ in head) + '|']
  lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
  return '\n'.join(lines)


if __name__ == '__main__':
  main()
