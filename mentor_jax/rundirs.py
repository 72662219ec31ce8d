"""The layout of a training workdir, and the readers of its files.

A workdir holds one run or a stack of K runs (config.seeds x config.sweep,
trained as one program; stack.py):

  <workdir>/config.json, metrics.jsonl, result.json, per_user_test.npz,
            checkpoints/{latest,best}/            a single run
  <workdir>/config.json, result.json ({'runs': [...], 'summary': ...}),
            checkpoints/latest/ (the stacked state),
            runs/<k>/                             each run, laid out as a
                                                  single run's workdir
                                                  (its best checkpoint only)

Every command that reads runs (evaluate, recommend, report, stats) finds
them here, so that none imports the trainer.
"""

from __future__ import annotations

import json
import pathlib
import statistics
from collections.abc import Sequence
from typing import Any

from mentor_jax import errors
from mentor_jax import workdir as workdir_lib

RUNS_DIR = 'runs'  # <workdir>/runs/<k>/
METRICS_FILE = 'metrics.jsonl'
PER_USER_FILE = 'per_user_test.npz'
# The scalar field of a per-user file that holds its epoch (files written
# before it was added have none).
PER_USER_EPOCH = 'epoch'


def read_metrics(run_dir: str | pathlib.Path) -> list[dict[str, Any]]:
  """The records of `<run_dir>/metrics.jsonl`, one per epoch.

  [] when the file does not exist yet. A line that a running trainer has
  not finished writing (or a full disk cut short) is skipped.
  """
  return workdir_lib.read_jsonl(pathlib.Path(run_dir) / METRICS_FILE)


def read_result(workdir: str | pathlib.Path) -> dict[str, Any] | None:
  """`<workdir>/result.json` as a dict; None when it is not there (yet)."""
  path = pathlib.Path(workdir) / 'result.json'
  if not path.exists():
    return None
  return read_json_object(path)


def is_stack(workdir: str | pathlib.Path) -> bool:
  """Whether `workdir` holds K stacked runs.

  A finished stack says so in result.json ('runs'); one still training (no
  result.json yet) by its `runs/<k>/config.json` folders.
  """
  workdir = pathlib.Path(workdir)
  result = read_result(workdir)
  if result is not None:
    return 'runs' in result
  return (workdir / RUNS_DIR / '0' / 'config.json').exists()


def run_dirs(workdir: str | pathlib.Path) -> list[pathlib.Path]:
  """[workdir] for a single run; `<workdir>/runs/<k>` in k order for a stack.

  Raises:
    ResultFileError: a stack's result.json names a run whose folder is
      missing, or its 'runs' is not a list of {'run': k, ...}.
  """
  workdir = pathlib.Path(workdir)
  if not is_stack(workdir):
    return [workdir]
  result = read_result(workdir)
  if result is None:  # Still training: the folders there are the runs.
    ks = sorted(int(p.name) for p in (workdir / RUNS_DIR).iterdir()
                if p.name.isdigit() and (p / 'config.json').exists())
  else:
    try:
      ks = [int(r['run']) for r in result['runs']]
    except (TypeError, KeyError, ValueError) as e:
      raise errors.ResultFileError(
          f'{workdir / "result.json"}: field runs: expected a list of '
          f'{{"run": k, ...}} objects ({e!r})') from e
  dirs = [workdir / RUNS_DIR / str(k) for k in ks]
  for d in dirs:
    if not d.is_dir():
      raise errors.ResultFileError(f'{workdir / "result.json"} lists run '
                                   f'{d.name}, but {d} is missing')
  return dirs


def run_dir(workdir: str | pathlib.Path, run: int | None) -> pathlib.Path:
  """The directory of run `run` of a stacked workdir (or `workdir` itself).

  Raises:
    ConfigError: a stack without `run`, or `run` of a workdir that is not a
      stack / out of range.
  """
  workdir = pathlib.Path(workdir)
  dirs = run_dirs(workdir) if is_stack(workdir) else []
  n = len(dirs)
  if run is None:
    if n:
      raise errors.ConfigError(
          f'{workdir} holds a stack of {n} runs; name one with --run K '
          f'(0..{n - 1}).')
    return workdir
  if not n:
    raise errors.ConfigError(f'--run {run}: {workdir} holds a single run, '
                             'not a stack; leave --run out.')
  if not 0 <= run < n:
    raise errors.ConfigError(f'--run {run}: {workdir} holds runs 0..{n - 1}')
  return dirs[run]


def best_from_log(log: list[dict[str, Any]], metric: str) -> dict[str, Any]:
  """The trainer's rule: first epoch with the best (rounded) valid metric."""
  best = max(log, key=lambda r: (round(r['valid'][metric], 4), -r['epoch']))
  return {'best_epoch': best['epoch'], 'valid': best['valid'],
          'test': best['test'], 'epochs_run': len(log)}


def read_json_object(path: pathlib.Path,
                     required: Sequence[str] = ()) -> dict[str, Any]:
  """A JSON object file with the `required` keys.

  Raises:
    ResultFileError: missing, not JSON, not an object, or a key missing.
  """
  try:
    value = json.loads(path.read_text())
  except FileNotFoundError:
    raise errors.ResultFileError(f'{path}: not found') from None
  except (ValueError, UnicodeDecodeError) as e:
    raise errors.ResultFileError(f'{path}: not valid JSON ({e})') from e
  if not isinstance(value, dict):
    raise errors.ResultFileError(f'{path}: expected a JSON object, found '
                                 f'{type(value).__name__}')
  missing = [k for k in required if k not in value]
  if missing:
    raise errors.ResultFileError(f'{path}: no {", ".join(missing)}; it has '
                                 f'{sorted(value)}')
  return value


def load_run(run_dir: pathlib.Path) -> dict[str, Any] | None:
  """One row's data: config, best-valid result, timing, finished or not.

  Returns None for a run that has not finished an epoch yet.

  Raises:
    ResultFileError: config.json or result.json damaged or partial.
  """
  config = read_json_object(run_dir / 'config.json',
                            ('model', 'valid_metric', 'epochs'))
  # Records a trainer wrote: an epoch with its metrics (others, e.g. a
  # line cut short and then completed by hand, are not epochs).
  log = [r for r in read_metrics(run_dir)
         if isinstance(r.get('valid'), dict) and isinstance(
             r.get('test'), dict) and 'epoch' in r
         and config['valid_metric'] in r['valid']]
  if (run_dir / 'result.json').exists():
    result, finished = read_json_object(
        run_dir / 'result.json',
        ('best_epoch', 'valid', 'test', 'epochs_run')), True
  elif log:
    result, finished = best_from_log(log, config['valid_metric']), False
  else:
    return None
  epochs = [r.get('train_time_s', float('nan')) for r in log[1:]] or [
      r.get('train_time_s', float('nan')) for r in log]  # Epoch 0 compiles.
  return {
      'dir': str(run_dir), 'config': config, 'result': result,
      'finished': finished,
      'stopped_early': finished and result['epochs_run'] < config['epochs'],
      's_per_epoch': statistics.median(epochs) if epochs else float('nan'),
  }


def overrides_of(configs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per config, the keys (but the seed) whose values differ among them."""
  keys = set().union(*configs) - {'seed'}
  differ = sorted(k for k in keys if len(
      {json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1)
  return [{k: c.get(k) for k in differ} for c in configs]
