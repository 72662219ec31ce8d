"""Before/after check of a refactor: the same runs, record for record.

  python bench/bit_identity.py run --out /tmp/before     # in the old checkout
  python bench/bit_identity.py run --out /tmp/after      # in the new one
  python bench/bit_identity.py compare /tmp/before /tmp/after

`run` trains every case below through the command line of the checkout it
sits in (`python -m mentor_jax.train`, so only command-line forms that both
sides accept are used) on one shared copy of the data (`--data`, built on
first use), and `compare` checks that every `metrics.jsonl` record and
every `result.json` of side A equals side B's field by field, timings
(keys with 'time' in their name) aside. Floats are compared as the JSON
text the trainer wrote, i.e. bit for bit. Exit status 0 when all equal.

Cases: configs/small.py MENTOR (3 epochs); MENTOR and each baseline on the
tiny .npz (3 epochs, batches of 64 so that an epoch has several steps); a
2-seed stack; a sweep stack; and two runs stopped after 2 epochs and
resumed to 4 (a single run and a stack).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
BASELINES = ('mfbpr', 'lightgcn', 'freedom', 'vbpr', 'bm3', 'lgmrec',
             'mmgcn', 'lattice')


def cases(data: pathlib.Path) -> dict[str, list[list[str]]]:
  """{case name: [command-line arguments of each start, in order]}."""
  tiny = [f'--config.data_npz={data / "tiny.npz"}',
          '--config.train_batch_size=64']
  small = [f'--config.data_npz={data / "small.npz"}']

  def baseline(model: str) -> list[str]:
    return [f'--config=configs/baseline.py:{model},tiktok',
            '--config.data_source=synth:tiny', *tiny]

  out = {'small_mentor': [['--config=configs/small.py', *small,
                           '--config.epochs=3']],
         'tiny_mentor': [['--config=configs/tiny.py', *tiny,
                          '--config.epochs=3']]}
  for model in BASELINES:
    out[f'tiny_{model}'] = [[*baseline(model), '--config.epochs=3']]
  out['stack_seeds_mentor'] = [['--config=configs/tiny.py', *tiny,
                                '--config.epochs=3',
                                '--config.seeds=(0,1)']]
  out['stack_sweep_freedom'] = [[*baseline('freedom'), '--config.epochs=3',
                                 '--config.seeds=(0,1)',
                                 '--config.sweep=reg_weight=1e-3,1e-2']]
  out['resumed_lattice'] = [[*baseline('lattice'), f'--config.epochs={n}']
                            for n in (2, 4)]
  out['resumed_stack_lightgcn'] = [
      [*baseline('lightgcn'), f'--config.epochs={n}', '--config.seeds=(0,1)']
      for n in (2, 4)]
  return out


def _train(args: list[str], workdir: pathlib.Path, log) -> None:
  command = [sys.executable, '-m', 'mentor_jax.train', *args,
             f'--workdir={workdir}']
  log.write('$ ' + ' '.join(command) + '\n')
  log.flush()
  subprocess.run(command, cwd=REPO, check=True, stdout=log,
                 stderr=subprocess.STDOUT)


def run(out: pathlib.Path, data: pathlib.Path, only: list[str]) -> None:
  out.mkdir(parents=True, exist_ok=True)
  data.mkdir(parents=True, exist_ok=True)
  todo = cases(data)
  for name in only or todo:
    workdir = out / name
    if (workdir / 'result.json').exists():
      print(f'{name}: done already')
      continue
    t0 = time.perf_counter()
    with open(out / f'{name}.log', 'a') as log:
      for args in todo[name]:
        _train(args, workdir, log)
    print(f'{name}: {time.perf_counter() - t0:.1f}s', flush=True)


def _records(workdir: pathlib.Path) -> dict[str, object]:
  """Every metrics.jsonl and result.json under `workdir`, by relative path."""
  found = {}
  for path in sorted(workdir.rglob('*')):
    rel = str(path.relative_to(workdir))
    if path.name == 'metrics.jsonl':
      found[rel] = [json.loads(line) for line in path.read_text().splitlines()
                    if line.strip()]
    elif path.name == 'result.json':
      found[rel] = json.loads(path.read_text())
  return found


def _strip_times(x):
  if isinstance(x, dict):
    return {k: _strip_times(v) for k, v in x.items() if 'time' not in k}
  if isinstance(x, list):
    return [_strip_times(v) for v in x]
  return x


def _first_difference(a, b, where: str = '') -> str | None:
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      if k not in a or k not in b:
        return f'{where}.{k}: only in {"B" if k not in a else "A"}'
      diff = _first_difference(a[k], b[k], f'{where}.{k}')
      if diff:
        return diff
    return None
  if isinstance(a, list) and isinstance(b, list):
    if len(a) != len(b):
      return f'{where}: {len(a)} entries vs {len(b)}'
    for i, (x, y) in enumerate(zip(a, b)):
      diff = _first_difference(x, y, f'{where}[{i}]')
      if diff:
        return diff
    return None
  return None if a == b else f'{where}: {a!r} vs {b!r}'


def compare(side_a: pathlib.Path, side_b: pathlib.Path) -> int:
  names = sorted(p.name for p in side_a.iterdir() if p.is_dir())
  bad = 0
  for name in names:
    a = _strip_times(_records(side_a / name))
    b = _strip_times(_records(side_b / name)) if (side_b / name).is_dir() \
        else {}
    diff = _first_difference(a, b)
    n = sum(len(v) if isinstance(v, list) else 1 for v in a.values())
    if diff or not a:
      bad += 1
      print(f'DIFFERENT {name}: {diff or "no records"}')
    else:
      print(f'equal     {name}: {len(a)} files, {n} records')
  print(f'{len(names) - bad} of {len(names)} cases equal')
  return 1 if bad or not names else 0


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  p_run = sub.add_parser('run')
  p_run.add_argument('--out', required=True, type=pathlib.Path)
  p_run.add_argument('--data', type=pathlib.Path,
                     default=pathlib.Path('/tmp/bit_identity_data'),
                     help='shared .npz files of both sides')
  p_run.add_argument('--only', nargs='*', default=[])
  p_cmp = sub.add_parser('compare')
  p_cmp.add_argument('a', type=pathlib.Path)
  p_cmp.add_argument('b', type=pathlib.Path)
  args = parser.parse_args()
  if args.command == 'run':
    run(args.out.resolve(), args.data.resolve(), args.only)
    return 0
  return compare(args.a, args.b)


if __name__ == '__main__':
  sys.exit(main())
