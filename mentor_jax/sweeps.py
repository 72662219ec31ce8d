"""`config.sweep`: which settings a stack can sweep, and the cells it lists.

'a=1e-4,1e-3;b=0.2' is a product of values (last key fastest); parts
separated by '|' are products listed one after another, so that a sweep can
hold any set of cells (the study's successive halving stacks a sample of a
grid). The stack (stack.py) trains each cell times each seed.
"""

from __future__ import annotations

import itertools

import ml_collections

from mentor_jax import config_spec
from mentor_jax import errors
from mentor_jax import family as family_lib


def sweepable(family: family_lib.ModelFamily) -> frozenset[str]:
  return family.sweepable | {'learning_rate'}


def parse_sweep(text: str, config: ml_collections.ConfigDict,
                family: family_lib.ModelFamily) -> dict[str, list[float]]:
  """'a=1e-4,1e-3;b=0.2,0.4' -> {'a': [1e-4, 1e-3], 'b': [0.2, 0.4]}.

  Raises:
    ConfigError: naming the part of `config.sweep` that is wrong.
  """
  specs = dict(config_spec.TRAINER)
  specs.update(family.config_spec)
  allowed = sorted(sweepable(family))
  sweep = {}
  for part in filter(None, (p.strip() for p in text.split(';'))):
    key, sep, values = part.partition('=')
    key = key.strip()
    where = f'config.sweep={text!r}: {part!r}'
    if not sep or not values.strip():
      raise errors.ConfigError(f'{where}: expected key=v1,v2,...')
    if key in sweep:
      raise errors.ConfigError(f'{where}: {key!r} is swept twice')
    if key not in allowed:
      raise errors.ConfigError(
          f'{where}: {key!r} cannot be swept in one stack for model '
          f'{family.name!r} (it changes shapes or code, or is not a setting '
          f'of the model); sweepable: {", ".join(allowed)}. Use '
          'python -m mentor_jax.grid, which runs one stack per value of '
          'such settings.')
    try:
      parsed = [float(v) for v in values.split(',')]
    except ValueError:
      raise errors.ConfigError(
          f'{where}: the values must be numbers') from None
    for v in parsed:
      specs[key].validate(f'sweep:{key}', v)
    if len(set(parsed)) != len(parsed):
      raise errors.ConfigError(
          f'{where}: a value is repeated (two runs would be the same run); '
          'give each value once')
    if key in family.gated and len({v == 0 for v in parsed}) > 1:
      raise errors.ConfigError(
          f'{where}: {key}=0 removes its loss term, a different program '
          'from the non-zero values; sweep them in separate runs (the grid '
          'runner groups them).')
    sweep[key] = parsed
  return sweep


def sweep_cells(text: str, config: ml_collections.ConfigDict,
                family: family_lib.ModelFamily) -> list[dict[str, float]]:
  """The swept values of each run: the product of each part of
  `config.sweep` separated by '|', in order.

  'a=1,2;b=3|a=5;b=4' -> [{a: 1, b: 3}, {a: 2, b: 3}, {a: 5, b: 4}]: a
  union of products lists any set of cells, such as a sample of a grid
  (the study's successive halving stacks its sampled cells).

  Raises:
    ConfigError: naming the part of `config.sweep` that is wrong.
  """
  cells, keys = [], None
  for block in text.split('|'):
    sweep = parse_sweep(block, config, family)
    if keys is not None and set(sweep) != set(keys):
      raise errors.ConfigError(
          f'config.sweep={text!r}: every part between | sweeps the same '
          f'keys ({", ".join(keys)}); {block.strip()!r} sweeps '
          f'{", ".join(sweep) or "nothing"}')
    keys = keys or list(sweep)
    cells += [{k: dict(zip(sweep, values))[k] for k in keys}
              for values in itertools.product(*sweep.values())]
  seen = set()
  for cell in cells:
    if tuple(cell.items()) in seen:
      raise errors.ConfigError(
          f'config.sweep={text!r}: the cell {cell} is listed twice (two '
          'runs would be the same run)')
    seen.add(tuple(cell.items()))
  for key in set(keys) & family.gated:
    if len({cell[key] == 0 for cell in cells}) > 1:
      raise errors.ConfigError(
          f'config.sweep={text!r}: {key}=0 removes its loss term, a '
          'different program from the non-zero values; sweep them in '
          'separate runs (the grid runner groups them).')
  return cells
