"""Start-up time of the trainer, first start against a rerun (the cache).

  python bench/bench_startup.py --config configs/small.py --reps 3
  python bench/bench_startup.py --config configs/synth_baby.py \
      --data-npz /work/bench_data/synth_baby.npz --reps 2

Each rep starts `python -m mentor_jax.train` twice in a fresh workdir with
a fresh, empty compilation cache folder (`MENTOR_JAX_COMPILE_CACHE`): the
first start compiles and writes the cache, the second is a rerun that
should load both epoch programs from it. A start is timed from the launch
to the start-up block's last line (data loaded, model built, epoch
compiled), then the process is stopped: no epoch is timed. Printed per
start: the wall seconds to that point and the start-up block's
"compiled in" line; then the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def one_start(config: str, overrides: list[str], workdir: pathlib.Path,
              cache: pathlib.Path, timeout_s: float) -> dict[str, object]:
  env = dict(os.environ, MENTOR_JAX_COMPILE_CACHE=str(cache))
  command = [sys.executable, '-m', 'mentor_jax.train', f'--config={config}',
             f'--workdir={workdir}', *overrides]
  t0 = time.perf_counter()
  proc = subprocess.Popen(command, cwd=REPO, env=env, text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  compiled, lines = '', []
  try:
    for line in proc.stderr:
      lines.append(line)
      if 'compiled  in' in line:
        compiled = line.split('compiled  in', 1)[1].strip()
      if line.lstrip().startswith('run       '):  # The block's last line.
        break
      if time.perf_counter() - t0 > timeout_s:
        raise TimeoutError(f'no start-up block in {timeout_s}s')
    wall = time.perf_counter() - t0
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  if not compiled:
    raise RuntimeError('no start-up block:\n' + ''.join(lines[-20:]))
  return {'wall_s': wall, 'compiled': compiled}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/small.py')
  parser.add_argument('--data-npz', default='')
  parser.add_argument('--reps', type=int, default=3)
  parser.add_argument('--timeout', type=float, default=1800)
  args = parser.parse_args()
  overrides = ['--config.epochs=5']
  if args.data_npz:
    overrides.append(f'--config.data_npz={args.data_npz}')
  sys.path.insert(0, str(REPO))
  from bench import common  # pylint: disable=g-import-not-at-top
  print(json.dumps(common.environment()))
  results = {'first': [], 'second': []}
  for rep in range(args.reps):
    with tempfile.TemporaryDirectory() as tmp:
      tmp = pathlib.Path(tmp)
      for which in ('first', 'second'):
        r = one_start(args.config, overrides, tmp / which, tmp / 'cache',
                      args.timeout)
        results[which].append(r)
        print(f'rep {rep} {which}: {r["wall_s"]:.1f}s to the first epoch; '
              f'compiled {r["compiled"]}', flush=True)
  print(json.dumps({
      which: {'median_wall_s': statistics.median(r['wall_s'] for r in rs),
              'starts': rs} for which, rs in results.items()}))


if __name__ == '__main__':
  main()
