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
run in `RUN_DIR/runs/<k>/`, see `stats`) gets one row per sweep cell (one
per workdir when only the seed varies): `mean ± std` over its runs, and a
second table with the Student-t 95% interval and n.

`--compare A B` prints, per metric (recall and ndcg @10 and @20, test split
unless --split valid), the mean of A and of B, the gain of B over A
((B - A) / A), Welch's t-test over runs (needs 2 runs a side) and the
paired t-test and Wilcoxon test over users (each run's
`per_user_test.npz`; a user's value is the mean over the side's runs);
`*` marks p < 0.05, as the MENTOR paper's Table 2 does. A side may be
several workdirs joined by commas, whose runs are pooled.

Outputs: the Markdown table (`--out`) and a PNG of the learning curves
(`--png`): valid and test metric per epoch, the total loss and each loss
part, one colour per run. With one RUN_DIR they default to
`RUN_DIR/report.md` and `RUN_DIR/curves.png`; with several, `--out` must be
named and the PNG goes beside it. `--compare` prints its table and writes
it only to a named `--out`. A file that git tracks is never written
(copy the output over it yourself if that is what you mean), and another
existing file only if this command wrote it or `--overwrite` is given.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import pathlib
import statistics
import subprocess
from collections.abc import Sequence
from typing import Any

from mentor_jax import errors
from mentor_jax import registry
from mentor_jax import rundirs
from mentor_jax import stats
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

def model_name(model: str) -> str:
  """As papers print it (the family's display name), else as given."""
  try:
    return registry.get(model).title
  except errors.ConfigError:  # A model this version does not know.
    return model


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
  log = rundirs.read_metrics(run_dir)
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


def _overrides_of(configs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per config, the keys (but the seed) whose values differ among them."""
  keys = set().union(*configs) - {'seed'}
  differ = sorted(k for k in keys if len(
      {json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1)
  return [{k: c.get(k) for k in differ} for c in configs]


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
    run = load_run(d) if (d / 'config.json').exists() else None
    if run is None:
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
  derived = _overrides_of([run['config'] for _, _, run in members])
  cells: dict[str, list[tuple[int, dict[str, Any], dict[str, Any]]]] = {}
  for (k, entry, run), guess in zip(members, derived):
    overrides = dict(entry.get('overrides', {}) if entry else guess)
    overrides.pop('seed', None)
    cells.setdefault(json.dumps(overrides, sort_keys=True), []).append(
        (k, overrides, run))
  rows = []
  for cell in cells.values():
    runs = [run for _, _, run in cell]
    try:
      summary = stats.summary_of_runs([run['result'] for run in runs])
    except ValueError as e:
      raise errors.ResultFileError(f'{workdir}: {e}') from e
    rows.append(dict(runs[0], dir=str(workdir), stack={
        'runs': runs, 'ks': [k for k, _, _ in cell],
        'seeds': [run['config'].get('seed') for run in runs],
        'overrides': cell[0][1], 'summary': summary}))
  return rows


def _fmt(x: float | None) -> str:
  return '' if x is None else f'{x:.4f}'


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


def _mean_std(summary: dict[str, Any] | None) -> str:
  if summary is None:
    return ''
  return f'{summary["mean"]:.4f} ± {summary["std"]:.4f}'


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
  runs = sorted(runs, key=lambda r: (r['config']['dataset'],
                                     r['config']['model']))
  for run in runs:
    c, res = run['config'], run['result']
    dataset = c['dataset']
    paper = PAPER.get((c['model'], dataset.removesuffix('_graph')))
    stack = run.get('stack')
    if stack is None:
      cells = [_fmt(res['test'].get(m)) for m in METRICS]
      best = f'{res["best_epoch"]} / {res["epochs_run"]}'
      where = f'`{run["dir"]}`'
      settings = _settings(c)
    else:
      cells = [_mean_std(stack['summary']['test'].get(m)) for m in METRICS]
      results = [r['result'] for r in stack['runs']]
      best = (f'{_span([r["best_epoch"] for r in results])} / '
              f'{_span([r["epochs_run"] for r in results])}')
      where = f'`{run["dir"]}` ({len(results)} runs)'
      settings = _settings(c, list(stack['overrides']))
    stop = _stop(c, [run] if stack is None else stack['runs'])
    lines.append('| ' + ' | '.join([
        model_name(c['model']), dataset, settings,
        *cells,
        _fmt(paper[1] if paper else None), _fmt(paper[3] if paper else None),
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


def load_side(workdirs: Sequence[pathlib.Path]) -> list[dict[str, Any]]:
  """The finished runs of one `--compare` side, pooled over its workdirs.

  Returns:
    Per run: {'dir' (the run's folder), 'config', 'result' (its single-run
    result: 'valid', 'test', ...), 'source' (the result.json it came
    from)}.

  Raises:
    UserError: a workdir is missing or has not finished (no result.json).
  """
  runs = []
  for workdir in workdirs:
    if not workdir.is_dir():
      raise errors.UserError(f'{workdir}: no such workdir')
    top = rundirs.read_result(workdir)
    if top is None:
      raise errors.ResultFileError(
          f'{workdir / "result.json"} not found: the run has not finished '
          '(or is still running); --compare needs finished runs')
    entries = top['runs'] if 'runs' in top else [top]
    for d, entry in zip(rundirs.run_dirs(workdir), entries):
      config_path = d / 'config.json'
      if not config_path.exists():
        raise errors.ResultFileError(f'{config_path} not found')
      runs.append({'dir': d, 'config': json.loads(config_path.read_text()),
                   'result': entry, 'source': workdir / 'result.json'})
  return runs


def _runs(n: int) -> str:
  return f'{n} run' if n == 1 else f'{n} runs'


def _fmt_p(p: float) -> str:
  """A p-value cell: n/a for nan, `*` for p < 0.05."""
  if math.isnan(p):
    return 'n/a'
  text = f'{p:.1e}' if p < 1e-4 else f'{p:.4f}'
  return text + ('*' if p < 0.05 else '')


def compare(side_a: Sequence[pathlib.Path], side_b: Sequence[pathlib.Path],
            *, split: str = 'test', paired: bool = True,
            metrics: Sequence[str] = METRICS) -> str:
  """The Markdown comparison of B against A (see the module docstring).

  Raises:
    UserError: a side is unfinished, a file is missing or malformed, or the
      two sides are on different datasets.
  """
  for name, side in (('A', side_a), ('B', side_b)):
    if not side:
      raise errors.UserError(f'--compare: side {name} names no workdir')
  runs = {'A': load_side(side_a), 'B': load_side(side_b)}
  datasets = {name: sorted({r['config'].get('dataset') for r in side})
              for name, side in runs.items()}
  if len(set(datasets['A']) | set(datasets['B'])) > 1:
    raise errors.UserError(
        f'the runs compared are on different datasets (A: '
        f'{", ".join(map(str, datasets["A"]))}; B: '
        f'{", ".join(map(str, datasets["B"]))}): compare runs on one dataset')
  values = {}
  for name, side in runs.items():
    for run in side:
      found = run['result'].get(split, {})
      missing = [m for m in metrics if m not in found]
      if missing:
        raise errors.ResultFileError(
            f'{run["source"]}: run {run["dir"]} has no {split} '
            f'{", ".join(missing)}; it has {sorted(found)}')
    values[name] = {m: [float(r['result'][split][m]) for r in side]
                    for m in metrics}
  per_user = {}
  if paired:
    for name, side in (('A', side_a), ('B', side_b)):
      per_user[name] = stats.load_per_user(side, split)
      missing = [m for m in metrics if m not in per_user[name]]
      if missing:
        first = rundirs.run_dirs(side[0])[0] / f'per_user_{split}.npz'
        raise errors.ResultFileError(
            f'{first} (and every per-user file of side {name}): no per-user '
            f'{", ".join(missing)}; found '
            f'{sorted(k for k in per_user[name] if k != "users")}')
  n_a, n_b = len(runs['A']), len(runs['B'])
  lines = [
      MARKER,
      '# B against A',
      '',
      f'A: {", ".join(f"`{d}`" for d in side_a)} ({_runs(n_a)}). '
      f'B: {", ".join(f"`{d}`" for d in side_b)} ({_runs(n_b)}). '
      f'Dataset {datasets["A"][0]}, {split} split, each run\'s metrics at '
      'its best-validation epoch; gain = (mean B - mean A) / mean A.',
      '',
      f'| metric | mean A ({_runs(n_a)}) | mean B ({_runs(n_b)}) | gain | '
      'Welch p (runs) | paired t p (users) | Wilcoxon p (users) |',
      '|---|---|---|---|---|---|---|',
  ]
  users = None
  for m in metrics:
    a, b = values['A'][m], values['B'][m]
    cells = []
    for side in (a, b):
      summary = stats.summarize(side)
      cells.append(_mean_std(summary) if len(side) > 1
                   else _fmt(summary['mean']))
    mean_a, mean_b = statistics.fmean(a), statistics.fmean(b)
    gain = (f'{100 * (mean_b - mean_a) / mean_a:+.2f}%' if mean_a
            else 'n/a')
    welch = stats.welch(b, a)
    if paired:
      test = stats.paired_users(per_user['B'], per_user['A'], m)
      users = test
      paired_cells = [_fmt_p(test['p']), _fmt_p(test['wilcoxon_p'])]
    else:
      paired_cells = ['not run', 'not run']
    lines.append('| ' + ' | '.join(
        [m, *cells, gain, _fmt_p(welch['p']), *paired_cells]) + ' |')
  notes = ['`*`: p < 0.05 (two-sided), as in the MENTOR paper\'s Table 2.']
  if n_a < 2 or n_b < 2:
    notes.append(
        f'Welch p: n/a. Welch\'s t-test over runs needs at least 2 runs on '
        f'each side; A has {n_a}, B has {n_b}. Train more seeds (a stacked '
        'workdir) to test over runs.')
  else:
    notes.append('Welch p: Welch\'s unequal-variance t-test over the runs '
                 '(each run one value).')
  if users is not None:
    notes.append(
        f'Paired p: over the {users["n_users"]} {split} users of both sides; '
        'a user\'s value is the mean over the side\'s runs of their '
        'per-user metric (per_user_' + split + '.npz). Wilcoxon drops users '
        'whose difference is 0.')
    if users['n_only_a'] or users['n_only_b']:
      notes.append(f'Left out: {users["n_only_b"]} users only in A\'s files, '
                   f'{users["n_only_a"]} only in B\'s.')
  else:
    notes.append('Paired tests over users: not run (--no-paired).')
  for name, side in runs.items():
    # From the configs, so that pooled single runs are caught too.
    cells = {json.dumps(o, sort_keys=True)
             for o in _overrides_of([r['config'] for r in side])}
    if len(cells) > 1:
      notes.append(f'Note: side {name} pools runs with different settings '
                   f'({"; ".join(sorted(cells))}).')
  lines += [''] + [f'- {note}' for note in notes]
  return '\n'.join(lines) + '\n'


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
    return errors.run_cli(lambda: _compare_main(args), debug=args.debug)
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
    check_output(args.out, overwrite=args.overwrite)
    if args.png is not None:
      check_output(args.png, overwrite=args.overwrite)
    runs, curves = [], []
    for d in dirs:
      if rundirs.is_stack(d):
        rows = load_stack(d)
        if not rows:
          print(f'skipped {d}: no run of the stack has finished an epoch')
        runs += rows
        curves += [(f'{run_label(d, dirs)}/{k}', member['config'],
                    rundirs.read_metrics(member['dir']))
                   for row in rows
                   for k, member in zip(row['stack']['ks'],
                                        row['stack']['runs'])]
        continue
      run = load_run(d) if (d / 'config.json').exists() else None
      if run is None:
        print(f'skipped {d}: no config.json or no finished epoch')
        continue
      runs.append(run)
      curves.append((run_label(d, dirs), run['config'],
                     rundirs.read_metrics(d)))
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


def _compare_main(args: argparse.Namespace) -> int:
  """`--compare A B`: prints the table, and writes it to a named --out."""
  sides = [[pathlib.Path(x) for x in side.split(',') if x]
           for side in args.compare]
  if args.out is not None:
    check_output(args.out, overwrite=args.overwrite)
  page = compare(*sides, split=args.split, paired=not args.no_paired)
  print(page.removeprefix(MARKER + '\n'), end='')
  if args.out is not None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_text_atomic(args.out, page)
    print(f'{args.out}: comparison')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
