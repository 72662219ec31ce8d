"""Hyper-parameter grid runner.

  python -m mentor_jax.grid --config configs/tiktok.py --workdir runs/grid \
      [--grid mask_weight_g=1e-4,1e-3 --grid temp=0.2,0.4,0.6]

Without --grid the grid is `config.grid` (the shipped MENTOR grid:
mask_weight_g in {1e-4, 1e-3} x temp in {0.2, 0.4, 0.6}). Cells that differ
only in settings the model can sweep as traced values train as one stacked
program (`stack.py`; the shipped grid is one stack of 6 runs, times
`config.seeds`); other settings make one stack per value (`stack_groups`).
`--nostack` runs `train.train_and_evaluate` per cell in its own
subdirectory instead. `grid_summary.json` and
`grid_summary.md` list every cell's valid-selected test metrics (test at the
epoch of best validation), the cell picked by validation (the clean
protocol), and the cell the official `quick_start` would report: the
highest *test* metric among the cells (test-set selection, MMRec issue #64).
"""

from __future__ import annotations

import itertools
import json
import pathlib
import signal
import sys
from typing import Any, Callable

from absl import flags
from absl import logging
import ml_collections
import numpy as np

from mentor_jax import errors
from mentor_jax import main as main_lib
from mentor_jax import registry
from mentor_jax import sweeps
from mentor_jax import train
from mentor_jax import workdir as workdir_lib

REPORT_KEYS = ('recall@10', 'recall@20', 'ndcg@10', 'ndcg@20')


def _parse_value(text: str, like: Any) -> Any:
  """Parses `text` as the type of the config's current value `like`."""
  if isinstance(like, bool):
    if text.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'expected a boolean, got {text!r}')
    return text.lower() in ('true', '1')
  if isinstance(like, int):
    return int(text)
  if isinstance(like, float):
    return float(text)
  return text


def parse_grid(specs: list[str], config: ml_collections.ConfigDict
               ) -> dict[str, list[Any]]:
  """['key=v1,v2', ...] -> {key: [v1, v2]}, typed like config[key]."""
  grid = {}
  for spec in specs:
    key, sep, values = spec.partition('=')
    key = key.strip()
    if not sep or not values:
      raise errors.ConfigError(f'--grid {spec!r}: expected key=v1,v2,...')
    if key not in config:
      raise errors.ConfigError(f'--grid {spec!r}: config has no key {key!r}')
    if key in grid:
      raise errors.ConfigError(f'--grid {spec!r}: {key!r} is given twice; '
                               'list all its values in one --grid')
    if not isinstance(config[key], (bool, int, float, str)):
      raise errors.ConfigError(
          f'--grid {spec!r}: config.{key} is a '
          f'{type(config[key]).__name__}, and a grid takes single values'
          + (" (for several seeds: --config.seeds='(0,1,2)', which every "
             'cell then runs)' if key == 'seeds' else ''))
    try:
      grid[key] = [_parse_value(v.strip(), config[key])
                   for v in values.split(',')]
    except ValueError as e:
      raise errors.ConfigError(
          f'--grid {spec!r}: a value is not a {type(config[key]).__name__}, '
          f'as config.{key} is ({e})') from None
    check_distinct(f'--grid {spec!r}', key, grid[key])
  return grid


def check_distinct(where: str, key: str, values: list[Any]) -> None:
  """Refuses a value given twice: two cells (or runs) would be one."""
  seen = set()
  for value in values:
    if value in seen:
      raise errors.ConfigError(
          f'{where}: {key}={value!r} is repeated (two cells would be the '
          'same run); give each value once')
    seen.add(value)


def config_grid(config: ml_collections.ConfigDict) -> dict[str, list[Any]]:
  """The grid stored in `config.grid` ({} if absent)."""
  if 'grid' not in config or config.grid is None:
    return {}
  grid = {k: list(v) for k, v in config.grid.items()}
  for key, values in grid.items():
    check_distinct(f'config.grid.{key}', key, values)
  return grid


def cells(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
  """Cartesian product in key order, last key fastest."""
  keys = list(grid)
  return [dict(zip(keys, vals))
          for vals in itertools.product(*(grid[k] for k in keys))]


def cell_name(cell: dict[str, Any]) -> str:
  return '_'.join(f'{k}={v}' for k, v in cell.items()) or 'default'


def stack_groups(config: ml_collections.ConfigDict,
                 grid: dict[str, list[Any]]
                 ) -> list[tuple[dict[str, Any], dict[str, list[Any]]]]:
  """The grid as stacks: [(static cell, {swept key: values})].

  A key the model can sweep (`sweeps.sweepable`) is stacked; any other key
  (shapes, code, the model) makes one group per value. A gated weight
  (`ModelFamily.gated`) is stacked over its non-zero values, and 0, which
  removes its term, gets a group of its own. Each group is a product of its
  swept values, so the groups cover the grid's cells exactly once.
  """
  if 'model' in grid:
    raise errors.ConfigError(
        'a grid over config.model cannot be stacked (each model has its own '
        'sweepable settings): run one grid per model, or pass --nostack')
  family = registry.get(config.model)
  swept_keys = [k for k in grid if k in sweeps.sweepable(family)]
  static_keys = [k for k in grid if k not in swept_keys]
  # Gated keys: a zero / non-zero part each.
  parts = []
  for k in swept_keys:
    values = grid[k]
    if k in family.gated:
      zero = [v for v in values if v == 0]
      nonzero = [v for v in values if v != 0]
      parts.append([p for p in (zero, nonzero) if p])
    else:
      parts.append([values])
  groups = []
  for static in cells({k: grid[k] for k in static_keys}):
    for choice in itertools.product(*parts):
      fixed = {k: v[0] for k, v in zip(swept_keys, choice) if len(v) == 1}
      swept = {k: v for k, v in zip(swept_keys, choice) if len(v) > 1}
      groups.append((dict(static, **fixed), swept))
  return groups


def sample_groups(config: ml_collections.ConfigDict,
                  sample: list[dict[str, Any]]
                  ) -> list[tuple[dict[str, Any], list[int]]]:
  """Any list of cells (a sample of a grid) as stacks: [(the values its
  cells share, [indices into `sample`])], in order of first appearance.

  Cells share a stack when they agree on every key the model cannot sweep
  and on which gated weights are zero (as `stack_groups`); the keys that
  vary inside a group are its sweep (`sample_sweep`).
  """
  family = registry.get(config.model)
  sweepable = sweeps.sweepable(family)
  groups: dict[tuple, list[int]] = {}
  for i, cell in enumerate(sample):
    key = tuple((k, v) if k not in sweepable else
                (k, v == 0) if k in family.gated else (k, None)
                for k, v in cell.items())
    groups.setdefault(key, []).append(i)
  out = []
  for members in groups.values():
    first = sample[members[0]]
    shared = {k: v for k, v in first.items()
              if all(sample[i][k] == v for i in members)}
    out.append((shared, members))
  return out


def sample_sweep(cells_: list[dict[str, Any]],
                 shared: dict[str, Any]) -> str:
  """`config.sweep` listing `cells_` one by one ('|' between them), over
  the keys not in `shared`; '' when they share every key."""
  return '|'.join(sweep_text({k: [v] for k, v in cell.items()
                              if k not in shared}) for cell in cells_
                  ) if len(cells_) > 1 else ''


def with_values(config: ml_collections.ConfigDict,
                values: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with `values` set (a grid cell)."""
  out = ml_collections.ConfigDict(config.to_dict())
  for key, value in values.items():
    out[key] = value
  return out


def sweep_text(swept: dict[str, list[Any]]) -> str:
  """{'a': [1, 2]} -> 'a=1,2' (`config.sweep`)."""
  return ';'.join(f'{k}={",".join(repr(float(v)) for v in vs)}'
                  for k, vs in swept.items())


def run_grid(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
             grid: dict[str, list[Any]] | None = None,
             train_fn: Callable[..., dict[str, Any]] | None = None,
             stacked: bool = False) -> dict[str, Any]:
  """Runs every cell and writes the summary.

  Args:
    config: the base config; each cell overrides its grid keys on a copy.
    workdir: cells go to <workdir>/<cell_name>; with `stacked`, each stack
      to <workdir>/<its static cell's name>, one run per cell (and seed).
    grid: {key: values}; None uses `config.grid`.
    train_fn: (config, workdir) -> result dict as `train.train_and_evaluate`
      (the default).
    stacked: train the cells that differ only in sweepable values as one
      stack (`stack_groups`); with `config.seeds`, a cell's row holds the
      mean over its seeds.

  Returns:
    The summary (also written as grid_summary.json / .md); a cell that
    diverged is a row without metrics. When a signal stopped a cell:
    {'interrupted': the signal's name, 'cell': its name}, and no summary.
  """
  if train_fn is None:
    train_fn = train.train_and_evaluate
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  grid = config_grid(config) if grid is None else grid
  metric = config.valid_metric
  # Every cell is checked before the first one trains: a bad value in the
  # last cell must not cost the time of all the others.
  jobs = []  # (name, config, static cell)
  if stacked:
    for static, swept in stack_groups(config, grid):
      job = with_values(config, static)
      job.sweep = sweep_text(swept)
      train.check_config(job)
      jobs.append((cell_name(static) if static else 'stack', job, static))
  else:
    for cell in cells(grid):
      job = with_values(config, cell)
      train.check_config(job)
      jobs.append((cell_name(cell), job, cell))
  if not jobs:
    raise errors.ConfigError('the grid has no cells: give --grid key=v1,v2 '
                             'or set config.grid')
  rows = []
  for name, job, static in jobs:
    logging.info('grid %s %s', 'stack' if stacked else 'cell', name)
    try:
      result = train_fn(job, workdir / name)
    except errors.TrainingDivergedError as e:
      # The other cells still count; this one is a row without metrics.
      logging.warning('grid cell %s: %s', name, e)
      rows.append({'cell': static, 'name': name, 'best_epoch': -1,
                   'valid': {}, 'test': {}, 'diverged': str(e)})
      continue
    if 'interrupted' in result:
      # A stopped cell is unfinished: no later cell, no summary. Rerunning
      # the command resumes it (the finished cells resume as done).
      logging.warning('grid stopped by %s in cell %s; run the same command '
                      'again to resume', result['interrupted'], name)
      return {'interrupted': result['interrupted'], 'cell': name}
    if 'runs' not in result:
      rows.append({'cell': static, 'name': name,
                   'best_epoch': result['best_epoch'],
                   'epochs_run': result.get('epochs_run'),
                   'valid': result['valid'], 'test': result['test']})
      continue
    rows.extend(_rows_of_stack(result, static, key_order=list(grid)))
  by_valid, by_test = select(rows, metric, 'the grid')
  summary = {'grid': grid, 'valid_metric': metric, 'cells': rows,
             'selected_by_valid': rows[by_valid]['name'],
             'selected_by_test': rows[by_test]['name']}
  workdir_lib.write_text_atomic(workdir / 'grid_summary.json',
                                json.dumps(summary, indent=2, default=str))
  workdir_lib.write_text_atomic(workdir / 'grid_summary.md',
                                format_markdown(summary, by_valid, by_test))
  return summary


def select(rows: list[dict[str, Any]], metric: str,
           what: str) -> tuple[int, int]:
  """(the row with the best valid `metric`, the one with the best test
  `metric`: what a test-selected runner would report); rows of diverged
  cells have no metrics and are never selected.

  Raises:
    TrainingDivergedError: every row diverged.
  """
  scored = [j for j, row in enumerate(rows) if metric in row['valid']]
  if not scored:
    first = rows[0] if rows else {}
    raise errors.TrainingDivergedError(
        f'every cell of {what} diverged (first: '
        f'{first.get("name", first.get("cell"))}: '
        f'{first.get("diverged", "no metrics")})')
  return (max(scored, key=lambda j: rows[j]['valid'][metric]),
          max(scored, key=lambda j: rows[j]['test'][metric]))


def _rows_of_stack(result: dict[str, Any], static: dict[str, Any],
                   key_order: list[str]) -> list[dict[str, Any]]:
  """One row per cell of a stack: its seeds' runs averaged."""
  by_cell: dict[str, list[dict[str, Any]]] = {}
  cell_of = {}
  for run in result['runs']:
    cell = dict(static, **run['overrides'])
    cell = {k: cell[k] for k in key_order if k in cell}
    name = cell_name(cell)
    by_cell.setdefault(name, []).append(run)
    cell_of[name] = cell
  rows = []
  for name, runs in by_cell.items():
    # Over the seeds that reached a best epoch (a diverged run has none).
    done = [r for r in runs if r['valid']]
    mean = lambda split, done=done: {
        m: float(np.mean([r[split][m] for r in done]))
        for m in (done[0][split] if done else {})}
    rows.append({'cell': cell_of[name], 'name': name,
                 'best_epoch': [r['best_epoch'] for r in runs],
                 'epochs_run': [r['epochs_run'] for r in runs],
                 'seeds': [r['seed'] for r in runs],
                 'runs': [r['run'] for r in runs],
                 'valid': mean('valid'), 'test': mean('test')})
  return rows


def format_markdown(summary: dict[str, Any], by_valid: int,
                    by_test: int) -> str:
  metric = summary['valid_metric']
  head = (['cell', 'best epoch', f'valid {metric}']
          + [f'test {k}' for k in REPORT_KEYS] + ['pick'])
  lines = ['# Grid summary', '',
           f'Test metrics are at each cell\'s best-valid epoch ({metric}).',
           '', '| ' + ' | '.join(head) + ' |',
           '|' + '---|' * len(head)]
  for j, row in enumerate(summary['cells']):
    pick = ' '.join(p for p, on in (('valid', j == by_valid),
                                    ('test (official)', j == by_test)) if on)
    vals = [row['name'] + (' (diverged)' if row.get('diverged') else ''),
            str(row['best_epoch']),
            f"{row['valid'].get(metric, float('nan')):.4f}"]
    vals += [f"{row['test'].get(k, float('nan')):.4f}" for k in REPORT_KEYS]
    lines.append('| ' + ' | '.join(vals + [pick]) + ' |')
  lines += ['',
            f"Selected by validation {metric}: **{summary['selected_by_valid']}**.",
            f"Official protocol (test {metric} among the cells, MMRec issue "
            f"#64): {summary['selected_by_test']}.", '']
  return '\n'.join(lines)


FLAGS = flags.FLAGS
flags.DEFINE_multi_string('grid', [], 'key=v1,v2,... (repeatable); default: '
                          'config.grid.')
flags.DEFINE_bool('stack', True, 'Train the cells that differ only in '
                  'sweepable values (and config.seeds) as one stacked '
                  'program (mentor_jax/stack.py); --nostack runs each cell '
                  'on its own.')


def main(argv):
  del argv
  config = FLAGS.config

  def run() -> int:
    grid = parse_grid(FLAGS.grid, config) if FLAGS.grid else None
    summary = run_grid(config,
                       FLAGS.workdir or f'runs/grid_{config.dataset}', grid,
                       stacked=FLAGS.stack)
    if 'interrupted' in summary:  # As the trainer: 130 for SIGINT, 143 ...
      return 128 + signal.Signals[summary['interrupted']].value
    names = [c['name'] for c in summary['cells']]
    print(format_markdown(summary, names.index(summary['selected_by_valid']),
                          names.index(summary['selected_by_test'])))
    return 0

  sys.exit(errors.run_cli(run, debug=FLAGS.debug))


def cli() -> None:
  """`mentor-grid` and `python -m mentor_jax.grid`."""
  main_lib.run_config_command(main)


if __name__ == '__main__':
  cli()
