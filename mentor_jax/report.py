"""Writes a Markdown results table from training workdirs.

  python -m mentor_jax.report runs/baselines/* --out docs/RESULTS_baselines.md

Each RUN_DIR is a `train.train_and_evaluate` workdir: `config.json` plus
`result.json` (test metrics at the best-valid epoch). A run without
`result.json` (stopped or still running) is reported from its
`metrics.jsonl` with the same best-valid rule, and marked as unfinished.
The paper's numbers (MENTOR_SPEC §9.1, Table 2 of the MENTOR paper) are put
beside each row where the paper has that model and dataset.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
from collections.abc import Sequence
from typing import Any

METRICS = ('recall@10', 'recall@20', 'ndcg@10', 'ndcg@20')

# MENTOR paper, Table 2 (MENTOR_SPEC §9.1): (R@10, R@20, N@10, N@20).
PAPER = {
    ('mfbpr', 'baby'): (.0357, .0575, .0192, .0249),
    ('mfbpr', 'sports'): (.0432, .0653, .0241, .0298),
    ('mfbpr', 'clothing'): (.0187, .0279, .0103, .0126),
    ('lightgcn', 'baby'): (.0479, .0754, .0257, .0328),
    ('lightgcn', 'sports'): (.0569, .0864, .0311, .0387),
    ('lightgcn', 'clothing'): (.0340, .0526, .0188, .0236),
    ('freedom', 'baby'): (.0627, .0992, .0330, .0424),
    ('freedom', 'sports'): (.0717, .1089, .0385, .0481),
    ('freedom', 'clothing'): (.0629, .0941, .0341, .0420),
    ('mentor', 'baby'): (.0678, .1048, .0362, .0450),
    ('mentor', 'sports'): (.0763, .1139, .0409, .0511),
    ('mentor', 'clothing'): (.0668, .0989, .0360, .0441),
}

MODEL_NAMES = {'mfbpr': 'MF-BPR', 'lightgcn': 'LightGCN',
               'freedom': 'FREEDOM', 'mentor': 'MENTOR'}


def read_metrics(run_dir: str | pathlib.Path) -> list[dict[str, Any]]:
  """The records of `<run_dir>/metrics.jsonl` (`train.MetricWriter`).

  [] when the file does not exist yet. A last line that a running trainer
  has not finished writing is skipped.
  """
  path = pathlib.Path(run_dir) / 'metrics.jsonl'
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines()
          if line.rstrip().endswith('}')]


def _best_from_log(log: list[dict[str, Any]], metric: str) -> dict[str, Any]:
  """The trainer's rule: first epoch with the best (rounded) valid metric."""
  best = max(log, key=lambda r: (round(r['valid'][metric], 4), -r['epoch']))
  return {'best_epoch': best['epoch'], 'valid': best['valid'],
          'test': best['test'], 'epochs_run': len(log)}


def load_run(run_dir: pathlib.Path) -> dict[str, Any] | None:
  """One row's data: config, best-valid result, timing, finished or not.

  Returns None for a run that has not finished an epoch yet.
  """
  config = json.loads((run_dir / 'config.json').read_text())
  log = read_metrics(run_dir)
  result_path = run_dir / 'result.json'
  if result_path.exists():
    result, finished = json.loads(result_path.read_text()), True
  elif log:
    result, finished = _best_from_log(log, config['valid_metric']), False
  else:
    return None
  epochs = [r['train_time_s'] for r in log[1:]] or [
      r['train_time_s'] for r in log]  # Epoch 0 includes the compile.
  return {
      'dir': str(run_dir), 'config': config, 'result': result,
      'finished': finished,
      'stopped_early': finished and result['epochs_run'] < config['epochs'],
      's_per_epoch': statistics.median(epochs) if epochs else float('nan'),
  }


def _fmt(x: float | None) -> str:
  return '' if x is None else f'{x:.4f}'


def _settings(config: dict[str, Any]) -> str:
  """The settings that tell runs of one model apart."""
  keys = {'lightgcn': ('n_layers',), 'freedom': ('dropout',),
          'mentor': ('mask_weight_g', 'temp')}.get(config['model'], ())
  keys = ('learning_rate', 'reg_weight') + keys
  return ', '.join(f'{k.removesuffix("_weight")}={config[k]:g}'
                   .replace('learning_rate', 'lr')
                   for k in keys if k in config)


def render(runs: Sequence[dict[str, Any]], notes: str = '') -> str:
  """The Markdown page; `notes` (Markdown) goes below the table."""
  lines = [
      '# Baselines in the mentor_jax framework',
      '',
      'Test metrics at the best-validation epoch (full ranking over all '
      'items, training items masked). "paper" is the MENTOR paper\'s '
      'Table 2 (MENTOR_SPEC §9.1); its Amazon splits are MMRec\'s draw, '
      'while `*_graph` datasets here are the real interaction graphs with a '
      'fresh draw of the same split rule and synthetic (unused) features. '
      'TikTok has no row in that table.',
      '',
      '| model | dataset | settings | R@10 | R@20 | N@10 | N@20 | '
      'paper R@20 | paper N@20 | best epoch / run | stop | s/epoch | run |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for run in sorted(runs, key=lambda r: (r['config']['dataset'],
                                         r['config']['model'])):
    c, res = run['config'], run['result']
    dataset = c['dataset']
    paper = PAPER.get((c['model'], dataset.removesuffix('_graph')))
    test = res['test']
    if run['stopped_early']:
      stop = f'early (patience {c["stopping_step"]})'
    elif run['finished']:
      stop = f'budget ({c["epochs"]} epochs)'
    else:  # Interrupted (resumable) or still running: no result.json yet.
      stop = 'no result.json (interrupted)'
    lines.append('| ' + ' | '.join([
        MODEL_NAMES.get(c['model'], c['model']), dataset, _settings(c),
        *(_fmt(test.get(m)) for m in METRICS),
        _fmt(paper[1] if paper else None), _fmt(paper[3] if paper else None),
        f'{res["best_epoch"]} / {res["epochs_run"]}', stop,
        f'{run["s_per_epoch"]:.2f}', f'`{run["dir"]}`']) + ' |')
  lines += ['', 'Settings of each run: `config.json` in its directory.', '']
  if notes:
    lines += [notes.rstrip(), '']
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('runs', nargs='+', type=pathlib.Path,
                      help='workdirs of train.train_and_evaluate')
  parser.add_argument('--out', type=pathlib.Path,
                      default=pathlib.Path('docs/RESULTS_baselines.md'))
  parser.add_argument('--notes', type=pathlib.Path,
                      help='a Markdown file appended below the table')
  args = parser.parse_args(argv)
  runs = []
  for d in args.runs:
    if not d.is_dir():  # e.g. a shell glob that also matched the logs
      continue
    run = load_run(d) if (d / 'config.json').exists() else None
    if run is None:
      print(f'skipped {d}: no config.json or no finished epoch')
    else:
      runs.append(run)
  if not runs:
    parser.error('no RUN_DIR holds a config.json')
  args.out.parent.mkdir(parents=True, exist_ok=True)
  notes = args.notes.read_text() if args.notes else ''
  args.out.write_text(render(runs, notes))
  print(f'{args.out}: {len(runs)} runs')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
