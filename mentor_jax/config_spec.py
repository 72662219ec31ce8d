"""One validation layer for configs: every key's type, range or choices.

`validate(config)` runs once, before anything is loaded or compiled, in
every command that takes a config (train, grid, evaluate's restored config
is trusted). A key is allowed only if the trainer (`TRAINER`) or the chosen
model family (`ModelFamily.config_spec`) declares it, so that a setting the
model would silently ignore is refused instead; every message names the
key, the value found and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from mentor_jax import mesh
from mentor_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Spec:
  """What one config key accepts.

  Attributes:
    allowed: the rule in words, for the error message.
    check: value -> True when the value is allowed.
  """

  allowed: str
  check: Callable[[Any], bool]

  def validate(self, key: str, value: Any) -> None:
    try:
      ok = bool(self.check(value))
    except (TypeError, ValueError):
      ok = False
    if not ok:
      raise ConfigError(f'config.{key}={value!r}: allowed values are '
                        f'{self.allowed}')


def _is_int(x: Any) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
  return (isinstance(x, numbers.Real) and not isinstance(x, bool)
          and math.isfinite(x))


def integer(low: int | None = None, high: int | None = None) -> Spec:
  """An int in [low, high] (either bound may be open-ended)."""
  text = ('integers' + (f' >= {low}' if low is not None else '')
          + (f' and <= {high}' if high is not None else ''))
  return Spec(text, lambda x: _is_int(x) and (low is None or x >= low)
              and (high is None or x <= high))


def number(low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> Spec:
  """A finite real number in the interval from low to high."""
  parts = []
  if low is not None:
    parts.append(f'{">" if low_open else ">="} {low:g}')
  if high is not None:
    parts.append(f'{"<" if high_open else "<="} {high:g}')
  text = 'finite numbers' + (' ' + ' and '.join(parts) if parts else '')

  def check(x):
    if not _is_real(x):
      return False
    if low is not None and (x <= low if low_open else x < low):
      return False
    if high is not None and (x >= high if high_open else x > high):
      return False
    return True
  return Spec(text, check)


def choice(*values: Any) -> Spec:
  return Spec(f'one of {values}', lambda x: any(
      x == v and type(x) is type(v) for v in values))  # 1 != True here.


def boolean() -> Spec:
  return Spec('True or False', lambda x: isinstance(x, bool))


def text(nonempty: bool = False) -> Spec:
  return Spec('non-empty strings' if nonempty else 'strings',
              lambda x: isinstance(x, str) and (bool(x) or not nonempty))


def int_tuple(low: int, *, distinct: bool = True, nonempty: bool = True,
              allowed_values: Sequence[int] | None = None) -> Spec:
  """A tuple (or list) of ints >= low, e.g. topk."""
  words = [f'ints >= {low}'] if allowed_values is None else [
      f'values from {tuple(allowed_values)}']
  if distinct:
    words.append('distinct')
  text_ = ('a non-empty ' if nonempty else 'a ') + 'tuple of ' + ', '.join(
      words)

  def check(x):
    if not isinstance(x, (tuple, list)) or (nonempty and not x):
      return False
    if not all(_is_int(v) and v >= low for v in x):
      return False
    if allowed_values is not None and any(v not in allowed_values for v in x):
      return False
    return not distinct or len(set(x)) == len(x)
  return Spec(text_, check)


def either(*specs: Spec) -> Spec:
  return Spec(' or '.join(s.allowed for s in specs),
              lambda x: any(_passes(s, x) for s in specs))


def _passes(spec: Spec, value: Any) -> bool:
  try:
    return bool(spec.check(value))
  except (TypeError, ValueError):
    return False


def _mesh_shape_ok(value: Any) -> bool:
  mesh.device_count(value)  # Raises ValueError for anything else.
  return True


POSITIVE = number(0.0, low_open=True)
NON_NEGATIVE = number(0.0)
PROBABILITY_BELOW_1 = number(0.0, 1.0, high_open=True)

# The trainer's own settings, shared by every model (configs/base.py's
# trainer_config; a model's keys are its family's `config_spec`).
TRAINER: dict[str, Spec] = {
    # Data.
    'dataset': text(nonempty=True),
    'data_npz': text(nonempty=True),
    'data_source': text(),
    'v_feat_file': text(nonempty=True),
    't_feat_file': text(nonempty=True),
    'model': text(nonempty=True),  # Checked against the registry.
    # Neighbours per item of the kNN lists uploaded (at most the .npz's).
    'knn_k': integer(1),
    # Optimizer and schedule.
    'learning_rate': POSITIVE,
    # MMRec's [factor, every]: learning_rate * factor ** (epoch / every).
    'learning_rate_scheduler': Spec(
        'a pair (factor, every) of finite numbers > 0',
        lambda x: isinstance(x, (tuple, list)) and len(x) == 2
        and all(_is_real(v) and v > 0 for v in x)),
    'train_batch_size': integer(1),
    'epochs': integer(1),
    'stopping_step': integer(0),
    'seed': integer(0, 2**31 - 1),
    # Stacked runs (stack.py): several seeds and a sweep of traced values.
    'seeds': Spec('a tuple of distinct ints in [0, 2**31 - 1] (empty: one '
                  'run with config.seed)',
                  lambda x: isinstance(x, (tuple, list)) and all(
                      _is_int(v) and 0 <= v < 2**31 for v in x)
                  and len(set(x)) == len(x)),
    'sweep': text(),
    'freeze_runs': Spec('a tuple of distinct run indices >= 0 of a stack',
                        lambda x: isinstance(x, (tuple, list)) and all(
                            _is_int(v) and v >= 0 for v in x)
                        and len(set(x)) == len(x)),
    # Runs of a stack computed at once: 'auto' (one at a time on a CPU, all
    # elsewhere), 'all' (one vmap) or a count such as '2'.
    'stack_parallel': Spec("'auto', 'all' or a count of runs such as '2'",
                           lambda x: isinstance(x, str) and (
                               x in ('auto', 'all')
                               or (x.isdigit() and int(x) >= 1))),
    # Evaluation.
    'valid_metric': text(nonempty=True),  # Checked against topk below.
    'topk': int_tuple(1),
    'eval_batch_size': integer(1),
    'eval_embeddings': choice('last_step', 'recompute'),
    # Engineering knobs.
    'spmm_kernel': choice('auto', 'csr', 'bcoo', 'segment_sum'),
    # 'auto', a folder, or 'off' (compilation_cache.py).
    'compile_cache': text(),
    # Scale-out.
    # A command-line override arrives as text ('2', '(2,)').
    'mesh_shape': Spec("'auto', n >= 1 or (n,), as a value or as text",
                       _mesh_shape_ok),
    'shard_tables': boolean(),
    'coordinator_address': text(),
    'num_processes': integer(0),
    'process_id': integer(-1),
    # Bookkeeping.
    'log_every_epochs': integer(1),
    'checkpoint_every_epochs': integer(1),
    'resume_other_data': boolean(),
    # A label set by configs/ablation.py, shown in reports.
    'variant': text(),
}


def validate(config: Mapping[str, Any],
             family_spec: Mapping[str, Spec],
             model_name: str) -> None:
  """Raises ConfigError for the first key that is unknown or out of range.

  Args:
    config: the run's ConfigDict (or a plain mapping).
    family_spec: the chosen model family's own keys.
    model_name: `config.model`, for the message.
  """
  specs = dict(TRAINER)
  specs.update(family_spec)
  for key in config.keys():
    if key == 'grid':
      _validate_grid(config[key], specs)
      continue
    if key not in specs:
      raise ConfigError(
          f'config.{key}: not a setting of the trainer or of model '
          f'{model_name!r}, so it would be ignored. Its settings: '
          f'{", ".join(sorted(family_spec)) or "none"} (and the trainer\'s, '
          'in mentor_jax/config_spec.py)')
    specs[key].validate(key, config[key])
  _validate_relations(config)


def _validate_grid(grid: Any, specs: Mapping[str, Spec]) -> None:
  """`config.grid.<key> = (v1, v2, ...)`: each value valid for `key`."""
  if not isinstance(grid, Mapping) and not hasattr(grid, 'keys'):
    raise ConfigError(f'config.grid={grid!r}: allowed values are a mapping '
                      'of config keys to tuples of values')
  for key in grid.keys():
    if key not in specs or key == 'grid':
      raise ConfigError(f'config.grid.{key}: not a setting that a grid can '
                        'vary (it must be a key of the config)')
    values = grid[key]
    if not isinstance(values, (tuple, list)) or not values:
      raise ConfigError(f'config.grid.{key}={values!r}: allowed values are '
                        'a non-empty tuple of values')
    for v in values:
      specs[key].validate(f'grid.{key}', v)


def _validate_relations(config: Mapping[str, Any]) -> None:
  """Rules that tie two keys together."""
  topk = tuple(config.get('topk', ()))
  metric = config.get('valid_metric')
  allowed = [f'{m}@{k}' for m in ('recall', 'ndcg') for k in topk]
  if metric is not None and metric not in allowed:
    raise ConfigError(f'config.valid_metric={metric!r}: allowed values are '
                      f'{allowed} (recall@K or ndcg@K with K in config.topk)')
  process_id = config.get('process_id', -1)
  n_proc = config.get('num_processes', 0)
  if n_proc > 1 and process_id >= n_proc:
    raise ConfigError(f'config.process_id={process_id!r}: allowed values are '
                      f'-1 (from the environment) or 0..{n_proc - 1}')


def config_to_json(config: Any) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


# Settings that do not change what an epoch computes: how long a run goes
# and how it is logged, where its data lives (the checkpoint signature
# checks the data itself), the grid runner's grid and a report label.
# Changing them on a resume is how a run is extended or moved, not a change
# of the experiment.
NOT_RESULT_KEYS = frozenset({
    'epochs', 'log_every_epochs', 'checkpoint_every_epochs', 'compile_cache',
    'resume_other_data', 'data_npz', 'data_source', 'grid', 'variant',
    'freeze_runs'})


def config_changes(saved: dict[str, Any], config: Any,
                   ignore: frozenset[str] = frozenset()) -> str:
  """'key: old -> new, ...' for the top-level settings that differ
  (those in `ignore` aside)."""
  now = config_to_json(config)
  return ', '.join(f'{k}: {saved.get(k)!r} -> {now.get(k)!r}'
                   for k in sorted((set(saved) | set(now)) - ignore)
                   if saved.get(k) != now.get(k))
