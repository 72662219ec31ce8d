"""Results table and learning curves from training workdirs.

  python -m mentor_jax.report runs/small                  # -> runs/small/
  python -m mentor_jax.report runs/baselines/* --out /tmp/baselines.md

Each RUN_DIR is a `train.train_and_evaluate` workdir: `config.json` plus
`result.json` (test metrics at the best-valid epoch). A run without
`result.json` (stopped or still running) is reported from its
`metrics.jsonl` with the same best-valid rule, and marked as unfinished.
The paper's numbers (MENTOR_SPEC §9.1, Table 2 of the MENTOR paper) are put
beside each row where the paper has that model and dataset.

Outputs: the Markdown table (`--out`) and a PNG of the learning curves
(`--png`): valid and test metric per epoch, the total loss and each loss
part, one colour per run. With one RUN_DIR they default to
`RUN_DIR/report.md` and `RUN_DIR/curves.png`; with several, `--out` must be
named and the PNG goes beside it. A file that git tracks is never written
(copy the output over it yourself if that is what you mean), and another
existing file only if this command wrote it or `--overwrite` is given.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import statistics
import subprocess
from collections.abc import Sequence
from typing import Any

from mentor_jax import errors
from mentor_jax import workdir as workdir_lib

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

  [] when the file does not exist yet. A line that a running trainer has
  not finished writing (or a full disk cut short) is skipped.
  """
  return workdir_lib.read_jsonl(pathlib.Path(run_dir) / 'metrics.jsonl')


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


# The first line of every page this module writes: it may replace those.
MARKER = '<!-- written by python -m mentor_jax.report -->'
# The PNG's Software text chunk, for the same purpose.
PNG_SOFTWARE = 'mentor_jax.report'
DEFAULT_TITLE = 'Baselines in the mentor_jax framework'


def render(runs: Sequence[dict[str, Any]], notes: str = '',
           title: str = DEFAULT_TITLE) -> str:
  """The Markdown page; `notes` (Markdown) goes below the table."""
  lines = [
      MARKER,
      f'# {title}',
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


def git_tracked(path: pathlib.Path) -> bool:
  """Whether git tracks `path` (False outside a repository or without git)."""
  path = path.absolute()
  folder = path.parent
  while not folder.is_dir():  # git -C needs a folder that exists.
    folder = folder.parent
  try:
    done = subprocess.run(
        ['git', '-C', str(folder), 'ls-files', '--error-unmatch', '--',
         str(path)], capture_output=True, check=False, timeout=30)
  except (OSError, subprocess.TimeoutExpired):
    return False
  return done.returncode == 0


def _written_here(path: pathlib.Path) -> bool:
  """Whether `path` is a page or figure that this module wrote."""
  try:
    if path.suffix.lower() == '.png':
      from PIL import Image  # pylint: disable=g-import-not-at-top
      with Image.open(path) as image:
        return image.info.get('Software') == PNG_SOFTWARE
    with path.open(errors='replace') as f:
      return f.readline().strip() == MARKER
  except Exception:  # pylint: disable=broad-except
    return False  # Unreadable or not an image: not ours.


def check_output(path: pathlib.Path, *, overwrite: bool) -> None:
  """Refuses a tracked file always, another existing one unless it is ours.

  Raises:
    OutputExistsError: with what to do instead.
  """
  if git_tracked(path):
    raise errors.OutputExistsError(
        f'{path} is tracked by git; the report never writes over it. Write '
        'to another path (--out/--png) and copy it over if you mean to.')
  if path.exists() and not path.is_dir() and _written_here(path):
    return
  workdir_lib.check_output(path, overwrite=overwrite)


def run_label(run_dir: pathlib.Path, all_dirs: Sequence[pathlib.Path]) -> str:
  """The run's folder name, with its parent when two runs share a name."""
  names = [d.absolute().name for d in all_dirs]
  name = run_dir.absolute().name
  if names.count(name) > 1:
    return f'{run_dir.absolute().parent.name}/{name}'
  return name


def plot_curves(runs: Sequence[tuple[str, dict[str, Any],
                                     list[dict[str, Any]]]],
                path: pathlib.Path) -> None:
  """Writes the learning curves of `runs` to the PNG `path`.

  Args:
    runs: (label, config, metrics.jsonl records) per run.
    path: the PNG to write (atomically).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')  # No display needed; call before pyplot.
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  # Records without loss parts (hand-written logs) still plot their metrics.
  parts = sorted({k for _, _, log in runs for r in log
                  for k in r.get('loss', {})})
  panels = ['valid', 'test', 'loss total'] + [f'loss: {k}' for k in parts]
  ncols = 3
  nrows = -(-len(panels) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows),
                           squeeze=False, layout='constrained')
  axes = dict(zip(panels, axes.flat))
  for ax in list(fig.axes)[len(panels):]:
    ax.set_visible(False)
  metrics = sorted({c['valid_metric'] for _, c, _ in runs})
  for i, (label, config, log) in enumerate(runs):
    color = f'C{i % 10}'
    epochs = [r['epoch'] for r in log]
    metric = config['valid_metric']
    name = label if len(metrics) == 1 else f'{label} ({metric})'
    for split in ('valid', 'test'):
      axes[split].plot(epochs, [r[split][metric] for r in log], color=color,
                       marker='.' if len(log) < 40 else None, label=name)
    best = _best_from_log(log, metric)['best_epoch']
    best_record = next(r for r in log if r['epoch'] == best)
    axes['valid'].plot([best], [best_record['valid'][metric]], 'o',
                       color=color, markersize=9, fillstyle='none')
    totals = [(r['epoch'], sum(r['loss'].values())) for r in log
              if r.get('loss')]
    if totals:
      axes['loss total'].plot(*zip(*totals), color=color, label=name)
    for k in parts:
      points = [(r['epoch'], r['loss'][k]) for r in log
                if k in r.get('loss', {})]
      if points:
        axes[f'loss: {k}'].plot(*zip(*points), color=color, label=name)
  axes['valid'].set_title(f'valid {", ".join(metrics)} (o: best epoch)')
  axes['test'].set_title(f'test {", ".join(metrics)}')
  for title, ax in axes.items():
    if title.startswith('loss'):
      ax.set_title(title)
      values = [y for line in ax.get_lines() for y in line.get_ydata()]
      if values and min(values) > 0 and max(values) > 20 * min(values):
        ax.set_yscale('log')
    ax.set_xlabel('epoch')
    ax.grid(alpha=0.3)
  axes['valid'].legend(fontsize='small')
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'.{path.name}.tmp.png')
  try:
    fig.savefig(tmp, dpi=100, metadata={'Software': PNG_SOFTWARE})
    tmp.replace(path)
  finally:
    plt.close(fig)
    tmp.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m mentor_jax.report',
      description=__doc__.splitlines()[0],
      epilog='Outputs default into the workdir when there is one RUN_DIR; '
      'files git tracks are never written.')
  parser.add_argument('runs', nargs='+', type=pathlib.Path,
                      help='workdirs of train.train_and_evaluate')
  parser.add_argument('--out', type=pathlib.Path,
                      help='the Markdown table (default: RUN_DIR/report.md '
                      'for one RUN_DIR; required for several)')
  parser.add_argument('--png', type=pathlib.Path,
                      help='the learning curves (default: RUN_DIR/curves.png '
                      'for one RUN_DIR, else beside --out)')
  parser.add_argument('--no-png', action='store_true',
                      help='write the table only')
  parser.add_argument('--notes', type=pathlib.Path,
                      help='a Markdown file appended below the table')
  parser.add_argument('--title', default=DEFAULT_TITLE,
                      help='the page heading')
  parser.add_argument('--overwrite', action='store_true',
                      help='replace existing outputs that this command did '
                      'not write (never a file git tracks)')
  parser.add_argument('--debug', action='store_true',
                      help='show the traceback of an error')
  args = parser.parse_args(argv)
  dirs = [d for d in args.runs if d.is_dir()]  # A glob may match logs too.
  if args.out is None:
    if len(dirs) != 1:
      parser.error('several RUN_DIRs: name the table with --out FILE.md')
    args.out = dirs[0] / 'report.md'
  if args.png is None and not args.no_png:
    args.png = (dirs[0] / 'curves.png' if len(dirs) == 1 and
                args.out == dirs[0] / 'report.md'
                else args.out.with_name(args.out.stem + '_curves.png'))

  def run() -> int:
    if args.png is not None and importlib.util.find_spec('matplotlib') is None:
      raise errors.UserError(
          'the learning curves need matplotlib: pip install '
          '"mentor_jax[report]", or pass --no-png for the table only')
    check_output(args.out, overwrite=args.overwrite)
    if args.png is not None:
      check_output(args.png, overwrite=args.overwrite)
    runs, curves = [], []
    for d in dirs:
      run = load_run(d) if (d / 'config.json').exists() else None
      if run is None:
        print(f'skipped {d}: no config.json or no finished epoch')
        continue
      runs.append(run)
      curves.append((run_label(d, dirs), run['config'], read_metrics(d)))
    if not runs:
      parser.error('no RUN_DIR holds a config.json and a finished epoch')
    notes = args.notes.read_text() if args.notes else ''
    args.out.parent.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_text_atomic(args.out, render(runs, notes, args.title))
    print(f'{args.out}: {len(runs)} runs')
    if args.png is not None:
      plot_curves(curves, args.png)
      print(f'{args.png}: learning curves')
    return 0

  return errors.run_cli(run, debug=args.debug)


if __name__ == '__main__':
  raise SystemExit(main())
