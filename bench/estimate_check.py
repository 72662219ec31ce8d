"""`mentor-study --estimate` against the study it estimates (issue 26).

  python bench/estimate_check.py --config tiny --models mfbpr,lightgcn,vbpr \
      --epochs 20 --out bench/out/estimate_tiny

Runs the estimate, then the study itself with every run trained exactly
`--epochs` epochs (no early stop), and compares, per model, the estimated
hours with the measured training time: the `train_time_s` of every epoch
of every search run and of the final stack (a stack's epoch trains all its
seeds, so it is counted once). Evaluation and compilation are outside both.
Writes estimate_check.json and .md to --out; nothing here passes or fails:
the ratios are for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import pathlib
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
from mentor_jax import rundirs
from mentor_jax import study
from mentor_jax import workdir as workdir_lib


def measured_seconds(folder: pathlib.Path) -> float:
  """Training seconds of one training folder (a run, or a stack's run 0)."""
  run0 = folder / rundirs.RUNS_DIR / '0'
  log = rundirs.read_metrics(run0 if run0.exists() else folder)
  return sum(r['train_time_s'] for r in log)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='tiny')
  parser.add_argument('--models', default='mfbpr,lightgcn,vbpr')
  parser.add_argument('--seeds', default='0,1')
  parser.add_argument('--cells', default='2')
  parser.add_argument('--epochs', type=int, default=20)
  parser.add_argument('--out', type=pathlib.Path, required=True)
  args = parser.parse_args()
  common = ['--config', args.config, '--models', args.models, '--seeds',
            args.seeds, '--search', 'random', '--cells', args.cells,
            f'--config.epochs={args.epochs}',
            f'--config.stopping_step={args.epochs}']
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(tmp) / 'study'
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
      assert study.main(common + ['--workdir', str(workdir), '--estimate',
                                  '--estimate-epochs', str(args.epochs)]) == 0
    estimate = {}
    for line in printed.getvalue().splitlines():
      cells = [c.strip() for c in line.split('|')[1:-1]]
      if len(cells) == 9 and cells[0] in args.models.split(','):
        estimate[cells[0]] = float(cells[7]) * 3600
    assert study.main(common + ['--workdir', str(workdir)]) == 0
    rows = []
    for model in args.models.split(','):
      folders = [p for p in (workdir / model / 'search').glob('*')
                 if p.is_dir()] + [workdir / model / 'final']
      seconds = sum(measured_seconds(f) for f in folders)
      rows.append({'model': model, 'estimate_s': estimate[model],
                   'measured_s': seconds,
                   'ratio': estimate[model] / seconds})
  total_e = sum(r['estimate_s'] for r in rows)
  total_m = sum(r['measured_s'] for r in rows)
  lines = ['| model | estimated s | measured s | estimate / measured |',
           '|---|---|---|---|']
  lines += [f'| {r["model"]} | {r["estimate_s"]:.1f} | {r["measured_s"]:.1f}'
            f' | {r["ratio"]:.2f} |' for r in rows]
  lines.append(f'| all | {total_e:.1f} | {total_m:.1f} | '
               f'{total_e / total_m:.2f} |')
  args.out.mkdir(parents=True, exist_ok=True)
  workdir_lib.write_json_atomic(args.out / 'estimate_check.json', {
      'args': vars(args) | {'out': str(args.out)}, 'rows': rows})
  workdir_lib.write_text_atomic(args.out / 'estimate_check.md',
                                '\n'.join(lines) + '\n')
  print('\n'.join(lines))
  return 0


if __name__ == '__main__':
  sys.exit(main())
