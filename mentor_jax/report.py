"""Results table and learning curves from training workdirs; comparisons.

  python -m mentor_jax.report runs/small                  # -> runs/small/
  python -m mentor_jax.report runs/baselines/* --out /tmp/baselines.md
  python -m mentor_jax.report --compare runs/freedom runs/mentor
  python -m mentor_jax.report --compare runs/a1,runs/a2 runs/b1,runs/b2

Each RUN_DIR is a training workdir (rundirs.py): `config.json` plus
`result.json` (test metrics at the best-valid epoch). A run without
`result.json` (stopped or still running) is reported from its
`metrics.jsonl` with the same best-valid rule, and marked as unfinished.
The paper's numbers (MENTOR_SPEC §9.1, Table 2 of the MENTOR paper) are put
beside each row where the paper has that model and dataset.

A stacked workdir (K runs, seeds x a sweep, trained as one program; each
run in `RUN_DIR/runs/<k>/`, see rundirs.py) gets one row per sweep cell (one
per workdir when only the seed varies): `mean ± std` over its runs, and a
second table with the Student-t 95% interval and n.

`--compare A B` prints the comparison of two sets of runs with
significance tests (compare.py).

Outputs: the Markdown table (`--out`) and a PNG of the learning curves
(`--png`, plots.py): valid and test metric per epoch, the total loss and
each loss part, one colour per run. With one RUN_DIR they default to
`RUN_DIR/report.md` and `RUN_DIR/curves.png`; with several, `--out` must be
named and the PNG goes beside it. `--compare` prints its table and writes
it only to a named `--out`. A file that git tracks is never written
(copy the output over it yourself if that is what you mean), and another
existing file only if this command wrote it or `--overwrite` is given
(`workdir.check_page_output`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any

from mentor_jax import compare as compare_lib
from mentor_jax import errors
from mentor_jax import plots
from mentor_jax import registry
from mentor_jax import rundirs
from mentor_jax import stats
from mentor_jax import workdir as workdir_lib

METRICS = compare_lib.METRICS

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

def model_name(model: str) -> str:
  """As papers print it (the family's display name), else as given."""
  try:
    return registry.get(model).title
  except errors.ConfigError:  # A model this version does not know.
    return model


def load_stack(workdir: pathlib.Path) -> list[dict[str, Any]]:
  """A stacked workdir's rows: one per sweep cell (runs with one override).

  Each row is `load_run`'s dict for the cell's first run, with 'dir' the
  workdir and 'stack': {'runs' (their `load_run` dicts), 'ks', 'seeds',
  'overrides', 'summary' (`stats.summary_of_runs` of their results)}.
  Runs that have not finished an epoch are left out; [] when none has.
  """
  dirs = rundirs.run_dirs(workdir)
  top = rundirs.read_result(workdir)
  entries = top['runs'] if top is not None else [None] * len(dirs)
  members = []
  for d, entry in zip(dirs, entries):
    run = rundirs.load_run(d) if (d / 'config.json').exists() else None
    if run is None and entry is not None:
      # The stack's result.json is the record of a finished stack: a run
      # whose folder lost its files still counts, and the report says so.
      run = _run_from_entry(workdir, d, entry)
      print(f'note: {d} has no config.json or metrics.jsonl; its result '
            f'is taken from {workdir / "result.json"}')
    if run is None:
      print(f'note: {d} is left out of the mean: no config.json or no '
            'finished epoch yet')
      continue
    if entry is not None and not run['finished']:
      # The stack's result.json is the record; a run folder may lag it.
      run['result'] = {k: entry[k] for k in
                       ('best_epoch', 'valid', 'test', 'epochs_run')}
      run['finished'] = True
      run['stopped_early'] = (run['result']['epochs_run']
                              < run['config']['epochs'])
    members.append((int(d.name), entry, run))
  if not members:
    return []
  derived = rundirs.overrides_of([run['config'] for _, _, run in members])
  cells: dict[str, list[tuple[int, dict[str, Any], dict[str, Any]]]] = {}
  for (k, entry, run), guess in zip(members, derived):
    overrides = dict(entry.get('overrides', {}) if entry else guess)
    overrides.pop('seed', None)
    cells.setdefault(json.dumps(overrides, sort_keys=True), []).append(
        (k, overrides, run))
  rows = []
  for cell in cells.values():
    runs = [run for _, _, run in cell]
    # As the trainer's summary: over the runs that reached a best epoch.
    done = [run['result'] for run in runs
            if run['result'].get('best_epoch', -1) >= 0]
    for k, _, run in cell:
      if run['result'].get('best_epoch', -1) < 0:
        print(f'note: run {k} of {workdir} has no best epoch (it diverged '
              'in its first epoch); it is left out of the mean')
    if not done:
      with_values = f' with {cell[0][1]}' if cell[0][1] else ''
      raise errors.ResultFileError(
          f'{workdir}: no run of the stack{with_values} reached a best '
          'epoch (each diverged in its first epoch)')
    try:
      summary = stats.summary_of_runs(done)
    except ValueError as e:
      raise errors.ResultFileError(f'{workdir}: {e}') from e
    rows.append(dict(runs[0], dir=str(workdir), stack={
        'runs': runs, 'ks': [k for k, _, _ in cell],
        'seeds': [run['config'].get('seed') for run in runs],
        'overrides': cell[0][1], 'summary': summary}))
  return rows


def _run_from_entry(workdir: pathlib.Path, run_dir: pathlib.Path,
                    entry: dict[str, Any]) -> dict[str, Any]:
  """`load_run`'s dict for a run of a finished stack from the stack's
  config.json and its result.json entry (the run's own files are gone)."""
  config = rundirs.read_json_object(workdir / 'config.json')
  config = dict(config, seed=entry.get('seed'), seeds=[], sweep='',
                **entry.get('overrides', {}))
  result = {k: entry[k] for k in ('best_epoch', 'valid', 'test',
                                  'epochs_run') if k in entry}
  return {'dir': str(run_dir), 'config': config, 'result': result,
          'finished': True,
          'stopped_early': result.get('epochs_run', 0) < config['epochs'],
          's_per_epoch': float('nan')}


def _value(x: Any) -> str:
  if isinstance(x, (int, float)) and not isinstance(x, bool):
    return f'{x:g}'
  return str(x)


def _settings(config: dict[str, Any], extra: Sequence[str] = ()) -> str:
  """The settings that tell runs of one model apart (and the `extra` keys):
  the learning rate, reg_weight and the family's `report_keys`."""
  try:
    own = registry.get(config['model']).report_keys
  except errors.ConfigError:
    own = ()
  keys = ('learning_rate', 'reg_weight') + tuple(own)
  keys += tuple(k for k in extra if k not in keys)
  return ', '.join(f'{k.removesuffix("_weight")}={_value(config[k])}'
                   .replace('learning_rate', 'lr')
                   for k in keys if k in config)


def _interval(summary: dict[str, Any] | None) -> str:
  if summary is None:
    return ''
  low, high = summary['ci95']
  if math.isnan(low):
    return f'n/a (n={summary["n"]})'
  return f'[{low:.4f}, {high:.4f}]'


def _span(values: Sequence[int]) -> str:
  return (f'{min(values)}' if min(values) == max(values)
          else f'{min(values)}–{max(values)}')


def _stop(config: dict[str, Any], runs: Sequence[dict[str, Any]]) -> str:
  """How the runs ended: early stop, the epoch budget, or not yet."""
  n = len(runs)
  early = sum(r['stopped_early'] for r in runs)
  unfinished = sum(not r['finished'] for r in runs)

  def of(k: int) -> str:
    return '' if n == 1 else f' in {k} of {n} runs'

  parts = []
  if early:
    parts.append(f'early (patience {config["stopping_step"]}){of(early)}')
  if unfinished:  # Interrupted (resumable) or still running.
    parts.append(f'no result.json (interrupted){of(unfinished)}')
  return '; '.join(parts) or f'budget ({config["epochs"]} epochs)'


def _seeds(seeds: Sequence[Any]) -> str:
  if all(isinstance(s, int) for s in seeds) and len(seeds) > 2 and (
      sorted(seeds) == list(range(min(seeds), max(seeds) + 1))):
    return f'{min(seeds)}–{max(seeds)}'
  return ', '.join(map(str, seeds))


DEFAULT_TITLE = 'Baselines in the mentor_jax framework'


def render(runs: Sequence[dict[str, Any]], notes: str = '',
           title: str = DEFAULT_TITLE) -> str:
  """The Markdown page; `notes` (Markdown) goes below the table."""
  lines = [
      workdir_lib.PAGE_MARKER,
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
  runs = sorted(runs, key=lambda r: (r['config']['dataset'],
                                     r['config']['model']))
  for run in runs:
    c, res = run['config'], run['result']
    dataset = c['dataset']
    paper = PAPER.get((c['model'], dataset.removesuffix('_graph')))
    stack = run.get('stack')
    if stack is None:
      cells = [compare_lib.fmt(res['test'].get(m)) for m in METRICS]
      best = f'{res["best_epoch"]} / {res["epochs_run"]}'
      where = f'`{run["dir"]}`'
      settings = _settings(c)
    else:
      summary = stack['summary']['test']
      cells = [compare_lib.mean_std(summary.get(m)) for m in METRICS]
      results = [r['result'] for r in stack['runs']]
      best = (f'{_span([r["best_epoch"] for r in results])} / '
              f'{_span([r["epochs_run"] for r in results])}')
      where = f'`{run["dir"]}` ({len(results)} runs)'
      settings = _settings(c, list(stack['overrides']))
    stop = _stop(c, [run] if stack is None else stack['runs'])
    lines.append('| ' + ' | '.join([
        model_name(c['model']), dataset, settings,
        *cells,
        compare_lib.fmt(paper[1] if paper else None),
        compare_lib.fmt(paper[3] if paper else None),
        best, stop, f'{run["s_per_epoch"]:.2f}', where]) + ' |')
  stacked = [r for r in runs if 'stack' in r]
  if stacked:
    lines += [
        '',
        'Stacked workdirs (several runs trained as one program): metric '
        'cells are mean ± sample std over the runs of one setting, each '
        'run\'s test metric taken at its own best-validation epoch; s/epoch '
        'is what the first run\'s metrics.jsonl records (the runs train as '
        'one program). Their 95% intervals '
        '(Student t, n - 1 degrees of freedom; none for n = 1):',
        '',
        '| model | dataset | settings | n | seeds | R@10 95% CI | '
        'R@20 95% CI | N@10 95% CI | N@20 95% CI | run |',
        '|---|---|---|---|---|---|---|---|---|---|',
    ]
    for run in stacked:
      c, stack = run['config'], run['stack']
      lines.append('| ' + ' | '.join([
          model_name(c['model']), c['dataset'],
          _settings(c, list(stack['overrides'])), str(len(stack['runs'])),
          _seeds(stack['seeds']),
          *(_interval(stack['summary']['test'].get(m)) for m in METRICS),
          f'`{run["dir"]}` (runs {_seeds(stack["ks"])})']) + ' |')
  lines += ['', 'Settings of each run: `config.json` in its directory.', '']
  if notes:
    lines += [notes.rstrip(), '']
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m mentor_jax.report',
      description=__doc__.splitlines()[0],
      epilog='Outputs default into the workdir when there is one RUN_DIR; '
      'files git tracks are never written.')
  parser.add_argument('runs', nargs='*', type=pathlib.Path,
                      help='training workdirs (single or stacked runs)')
  parser.add_argument('--compare', nargs=2, metavar=('A', 'B'),
                      help='compare B against A instead: each a workdir or '
                      'several joined by commas (their runs pooled)')
  parser.add_argument('--split', choices=('test', 'valid'), default='test',
                      help='the split --compare reads (default: test)')
  parser.add_argument('--no-paired', action='store_true',
                      help='--compare over runs only (no per-user files)')
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
  if args.compare:
    if args.runs:
      parser.error('--compare A B takes its workdirs as A and B; drop the '
                   'RUN_DIR arguments')
    return errors.run_cli(lambda: compare_lib.main(args), debug=args.debug)
  if not args.runs:
    parser.error('name at least one RUN_DIR (or --compare A B)')
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
    workdir_lib.check_page_output(args.out, overwrite=args.overwrite)
    if args.png is not None:
      workdir_lib.check_page_output(args.png, overwrite=args.overwrite)
    runs, curves = [], []
    for d in dirs:
      if rundirs.is_stack(d):
        rows = load_stack(d)
        if not rows:
          print(f'skipped {d}: no run of the stack has finished an epoch')
        runs += rows
        curves += [(f'{plots.run_label(d, dirs)}/{k}', member['config'],
                    rundirs.read_metrics(member['dir']))
                   for row in rows
                   for k, member in zip(row['stack']['ks'],
                                        row['stack']['runs'])]
        continue
      run = rundirs.load_run(d) if (d / 'config.json').exists() else None
      if run is None:
        print(f'skipped {d}: no config.json or no finished epoch')
        continue
      runs.append(run)
      curves.append((plots.run_label(d, dirs), run['config'],
                     rundirs.read_metrics(d)))
    if not runs:
      parser.error('no RUN_DIR holds a config.json and a finished epoch')
    notes = args.notes.read_text() if args.notes else ''
    args.out.parent.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_text_atomic(args.out, render(runs, notes, args.title))
    print(f'{args.out}: {len(runs)} runs')
    if args.png is not None:
      plots.plot_curves(curves, args.png)
      print(f'{args.png}: learning curves')
    return 0

  return errors.run_cli(run, debug=args.debug)


if __name__ == '__main__':
  raise SystemExit(main())
