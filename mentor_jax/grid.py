"""Hyper-parameter grid runner.

  python -m mentor_jax.grid --config configs/tiktok.py --workdir runs/grid \
      [--grid mask_weight_g=1e-4,1e-3 --grid temp=0.2,0.4,0.6]

Without --grid the grid is `config.grid` (the shipped MENTOR grid:
mask_weight_g in {1e-4, 1e-3} x temp in {0.2, 0.4, 0.6}). Each cell runs
`train.train_and_evaluate` in its own subdirectory; `grid_summary.json` and
`grid_summary.md` list every cell's valid-selected test metrics (test at the
epoch of best validation), the cell picked by validation (the clean
protocol), and the cell the official `quick_start` would report: the
highest *test* metric among the cells (test-set selection, MMRec issue #64).
"""

from __future__ import annotations

import itertools
import json
import pathlib
import sys
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
import ml_collections

# Importing train defines the --config and --workdir flags this CLI shares.
from mentor_jax import errors
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
    try:
      grid[key] = [_parse_value(v.strip(), config[key])
                   for v in values.split(',')]
    except ValueError as e:
      raise errors.ConfigError(
          f'--grid {spec!r}: a value is not a {type(config[key]).__name__}, '
          f'as config.{key} is ({e})') from None
  return grid


def config_grid(config: ml_collections.ConfigDict) -> dict[str, list[Any]]:
  """The grid stored in `config.grid` ({} if absent)."""
  if 'grid' not in config or config.grid is None:
    return {}
  return {k: list(v) for k, v in config.grid.items()}


def cells(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
  """Cartesian product in key order, last key fastest."""
  keys = list(grid)
  return [dict(zip(keys, vals))
          for vals in itertools.product(*(grid[k] for k in keys))]


def cell_name(cell: dict[str, Any]) -> str:
  return '_'.join(f'{k}={v}' for k, v in cell.items()) or 'default'


def run_grid(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
             grid: dict[str, list[Any]] | None = None,
             train_fn: Callable[..., dict[str, Any]] | None = None
             ) -> dict[str, Any]:
  """Runs every cell and writes the summary.

  Args:
    config: the base config; each cell overrides its grid keys on a copy.
    workdir: cells go to <workdir>/<cell_name>.
    grid: {key: values}; None uses `config.grid`.
    train_fn: (config, workdir) -> result dict as `train.train_and_evaluate`
      (the default).

  Returns:
    The summary (also written as grid_summary.json / .md).
  """
  if train_fn is None:
    train_fn = train.train_and_evaluate
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  grid = config_grid(config) if grid is None else grid
  metric = config.valid_metric
  # Every cell is checked before the first one trains: a bad value in the
  # last cell must not cost the time of all the others.
  configs = []
  for cell in cells(grid):
    cell_config = ml_collections.ConfigDict(config.to_dict())
    for key, value in cell.items():
      cell_config[key] = value
    train.check_config(cell_config)
    configs.append((cell, cell_config))
  if not configs:
    raise errors.ConfigError('the grid has no cells: give --grid key=v1,v2 '
                             'or set config.grid')
  rows = []
  for cell, cell_config in configs:
    name = cell_name(cell)
    logging.info('grid cell %s', name)
    result = train_fn(cell_config, workdir / name)
    rows.append({'cell': cell, 'name': name,
                 'best_epoch': result['best_epoch'],
                 'epochs_run': result.get('epochs_run'),
                 'valid': result['valid'], 'test': result['test']})
  by_valid = max(range(len(rows)), key=lambda j: rows[j]['valid'][metric])
  by_test = max(range(len(rows)), key=lambda j: rows[j]['test'][metric])
  summary = {'grid': grid, 'valid_metric': metric, 'cells': rows,
             'selected_by_valid': rows[by_valid]['name'],
             'selected_by_test': rows[by_test]['name']}
  workdir_lib.write_text_atomic(workdir / 'grid_summary.json',
                                json.dumps(summary, indent=2, default=str))
  workdir_lib.write_text_atomic(workdir / 'grid_summary.md',
                                format_markdown(summary, by_valid, by_test))
  return summary


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
    vals = [row['name'], str(row['best_epoch']),
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


def main(argv):
  del argv
  config = FLAGS.config

  def run() -> int:
    grid = parse_grid(FLAGS.grid, config) if FLAGS.grid else None
    summary = run_grid(config,
                       FLAGS.workdir or f'runs/grid_{config.dataset}', grid)
    names = [c['name'] for c in summary['cells']]
    print(format_markdown(summary, names.index(summary['selected_by_valid']),
                          names.index(summary['selected_by_test'])))
    return 0

  sys.exit(errors.run_cli(run, debug=FLAGS.debug))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
