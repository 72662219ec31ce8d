"""Successive halving: a study's search of N cells for about the cost of a
few runs (`mentor-study --search halving --rung-epochs R`).

The sampled cells train with the study's first seed as stacks, one per
group of cells that share what a stack cannot sweep (`grid.sample_groups`),
and climb rungs: after R epochs, 2R, 4R, ... the cells not yet frozen are
ranked by their best valid metric so far and the worse half is frozen
(`config.freeze_runs`): it trains no further and keeps its best epoch.
Once one cell is left, or the next rung would pass `config.epochs`, the
remaining cells train on to their early stop. On a CPU the stack skips a
frozen run (`stack.over_runs`), so it costs nothing.

A rung is every stack trained to that rung's epochs, resuming from its own
checkpoint. Each decision is written to `<search dir>/halving.json` before
the next rung trains, and an interrupted search replays the decisions it
finds there and resumes the rung it was in: the checkpoints have moved past
the earlier rungs, so those cannot be decided again.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Callable

from absl import logging
import ml_collections

from mentor_jax import errors
from mentor_jax import grid as grid_lib
from mentor_jax import workdir as workdir_lib

RECORD_FILE = 'halving.json'


def rungs(first: int, limit: int, n_cells: int) -> list[int]:
  """The epochs after which the worse half is frozen: first, 2 first, ...
  while more than one cell is left and the rung is below `limit`."""
  out, epochs, left = [], first, n_cells
  while left > 1 and epochs < limit:
    out.append(epochs)
    left = math.ceil(left / 2)
    epochs *= 2
  return out


def worse_half(scores: dict[int, float | None]) -> list[int]:
  """The cells to freeze: the worse floor(n/2) of `scores` (cell -> best
  valid metric so far; None for a cell without one, which goes first). Ties
  keep the earlier cell, so a decision depends on the scores alone."""
  order = sorted(scores, key=lambda i: (
      scores[i] is None, -(scores[i] or 0.0), i))
  return sorted(order[math.ceil(len(order) / 2):])


def run_epochs(first: int, n_cells: int, typical: int) -> float:
  """Run-epochs of a halving search whose survivors train `typical`
  epochs (an estimate: a cell that stops early stops sooner)."""
  total, trained, left = 0.0, 0, n_cells
  for rung in rungs(first, typical, n_cells):
    total += left * (rung - trained)
    trained, left = rung, math.ceil(left / 2)
  return total + left * (typical - trained)


def search(config: ml_collections.ConfigDict, cells: list[dict[str, Any]],
           seed: int, first: int, directory: pathlib.Path,
           train_fn: Callable[..., dict[str, Any]]) -> dict[str, Any]:
  """Halving over `cells` with `seed`; stacks in `directory/<group>`.

  Returns:
    {'rows': one per cell (as the random search's, plus 'epochs_run' and
    'frozen_after': the rung's epochs, or None for a survivor),
    'rungs': the decisions}, or {'interrupted': signal name}.
  """
  groups = grid_lib.sample_groups(config, cells)
  names = [grid_lib.cell_name(cell) for cell in cells]
  record_path = directory / RECORD_FILE
  record = {'cells': names, 'rung_epochs': first, 'rungs': []}
  if record_path.exists():
    stored = json.loads(record_path.read_text())
    if (stored.get('cells'), stored.get('rung_epochs')) != (names, first):
      raise errors.ConfigError(
          f'{record_path}: a halving search of other cells or rungs; use '
          'another --workdir')
    record = stored
  frozen_after: dict[int, int] = {}
  for rung in record['rungs']:
    for name in rung['frozen']:
      frozen_after[names.index(name)] = rung['epochs']

  def train_all(epochs: int) -> dict[int, dict[str, Any]] | dict[str, str]:
    """Every stack trained to `epochs` with the frozen runs: cell -> run."""
    runs = {}
    for shared, members in groups:
      job = grid_lib.with_values(config, shared)
      job.sweep = grid_lib.sample_sweep([cells[i] for i in members], shared)
      job.seeds = (seed,)  # a stack even for one cell, so that it freezes
      job.epochs = epochs
      job.freeze_runs = tuple(k for k, i in enumerate(members)
                              if i in frozen_after)
      result = train_fn(job, directory / (grid_lib.cell_name(shared)
                                          if shared else 'stack'))
      if 'interrupted' in result:
        return result
      runs.update(zip(members, result['runs']))
    return runs

  metric = config.valid_metric
  decided = len(record['rungs'])
  for epochs in rungs(first, int(config.epochs), len(cells))[decided:]:
    runs = train_all(epochs)
    if 'interrupted' in runs:
      return runs
    scores = {i: runs[i]['valid'].get(metric) for i in runs
              if i not in frozen_after}
    freeze = worse_half(scores)
    for i in freeze:
      frozen_after[i] = epochs
    record['rungs'].append({'epochs': epochs, 'scores': {
        names[i]: v for i, v in scores.items()},
                            'frozen': [names[i] for i in freeze]})
    workdir_lib.write_json_atomic(record_path, record)
    logging.info('halving: after %d epochs, %s frozen; cells left: %d',
                 epochs, [names[i] for i in freeze],
                 len(cells) - len(frozen_after))
  runs = train_all(int(config.epochs))
  if 'interrupted' in runs:
    return runs
  rows = []
  for i, cell in enumerate(cells):
    run = runs[i]
    row = {'cell': cell, 'best_epoch': run['best_epoch'],
           'epochs_run': run['epochs_run'], 'valid': run['valid'],
           'test': run['test'], 'frozen_after': frozen_after.get(i)}
    if not run['valid']:
      row['diverged'] = 'no valid epoch (the run diverged)'
    rows.append(row)
  return {'rows': rows, 'rungs': record['rungs']}
