"""What the commands print.

* `quiet_backend_probe`: JAX logs `Unable to initialize backend 'tpu'` (an
  INFO record of its backend probe) on every machine without a TPU. The
  filter drops exactly those records; the probe itself, the choice of
  device (GPU included) and JAX's warnings are untouched. Installed when
  `mentor_jax` is imported, before any backend starts.
* `setup_logging`: `HH:MM:SS message` lines instead of absl's
  `I1201 21:59:28.884928 139702279490432 train.py:299]` prefix.
* `startup_block`, `epoch_line`: what a training run prints when it
  starts and after each epoch.
* `transient`: a status line shown on a terminal while a slow step runs.

The `--config` commands' plumbing is in main.py.
"""

from __future__ import annotations

import logging
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging as absl_logging

from mentor_jax import errors


class _DropBackendProbe(logging.Filter):
  """Drops JAX's INFO records about backends that are not installed."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno <= logging.INFO
                and str(record.msg).startswith('Unable to initialize backend'))


def quiet_backend_probe() -> None:
  """Installs the filter on JAX's backend logger (idempotent)."""
  logger = logging.getLogger('jax._src.xla_bridge')
  if not any(isinstance(f, _DropBackendProbe) for f in logger.filters):
    logger.addFilter(_DropBackendProbe())


class _Formatter(logging.Formatter):
  """`HH:MM:SS message`; warnings and errors say so."""

  def format(self, record: logging.LogRecord) -> str:
    text = super().format(record)
    stamp = self.formatTime(record, '%H:%M:%S')
    if record.levelno >= logging.WARNING:
      text = f'{record.levelname}: {text}'
    # Continuation lines (a block, a traceback) start under the message.
    return f'{stamp} ' + text.replace('\n', '\n' + ' ' * (len(stamp) + 1))


class _OrbaxFilter(logging.Filter):
  """Drops Orbax's INFO records (several lines per save) from absl's log,
  and its errors about a full disk: each comes with a library traceback
  (300-700 lines in all for one failed save), and the command ends with
  one `error: no space left writing ...` line that says what to do."""

  def filter(self, record: logging.LogRecord) -> bool:
    from_orbax = '/orbax/' in record.pathname.replace('\\', '/')
    if from_orbax and record.levelno < logging.WARNING:
      return False
    # asyncio reports the failed writes of Orbax's event loop too.
    if from_orbax or record.name == 'asyncio':
      exc = record.exc_info[1] if record.exc_info else None
      return (errors.no_space_error(RuntimeError(record.getMessage())) is None
              and (exc is None or errors.no_space_error(exc) is None))
    return True


def _drop_closed_loop_noise(default: Callable[[Any], None]
                            ) -> Callable[[Any], None]:
  """An unraisable-exception hook without the `Event loop is closed` ones.

  When one of a save's writes fails, Orbax closes its event loop while
  tensorstore's other writes are in flight; each of their callbacks then
  reports this RuntimeError as unraisable (a bare traceback). The failure
  itself reaches the caller as an exception.
  """
  def hook(unraisable: Any) -> None:
    if not (unraisable.exc_type is RuntimeError
            and str(unraisable.exc_value) == 'Event loop is closed'):
      default(unraisable)
  hook.drops_closed_loop_noise = True
  return hook


def quiet_orbax_logs() -> None:
  """Keeps the training log readable: Orbax warnings stay, chatter and
  full-disk tracebacks go (idempotent)."""
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _OrbaxFilter) for f in handler.filters):
    handler.addFilter(_OrbaxFilter())
  if not getattr(sys.unraisablehook, 'drops_closed_loop_noise', False):
    sys.unraisablehook = _drop_closed_loop_noise(sys.unraisablehook)


def setup_logging() -> None:
  """Plain, short log lines for the command-line tools (absl's handler)."""
  absl_logging.get_absl_handler().setFormatter(_Formatter('%(message)s'))


def _mib(n_bytes: float) -> str:
  return (f'{n_bytes / 2**30:.2f} GiB' if n_bytes >= 2**30
          else f'{n_bytes / 2**20:.1f} MiB')


def peak_memory_bytes(*compiled: Any) -> dict[str, int] | None:
  """XLA's memory analysis of compiled programs, per device, or None.

  `peak` = arguments + outputs - donated (aliased) + temporaries: every
  buffer of the program live at once, an upper bound on what it allocates.
  With several programs (an epoch's begin and steps), the one with the
  largest peak.
  """
  best = None
  for program in compiled:
    analysis = getattr(program, 'memory_analysis', None)
    try:
      stats = analysis() if analysis is not None else None
    except Exception:  # pylint: disable=broad-except
      stats = None  # Some backends do not implement it.
    if stats is None:
      continue
    out = {name: int(getattr(stats, f'{name}_size_in_bytes', 0))
           for name in ('argument', 'output', 'alias', 'temp')}
    out['peak'] = (out['argument'] + out['output'] - out['alias']
                   + out['temp'])
    if best is None or out['peak'] > best['peak']:
      best = out
  return best


def startup_block(*, devices: Sequence[Any], dataset: Any, n_params: int,
                  n_steps: int, batch_size: int, kernel: str, model: str,
                  workdir: str | pathlib.Path, epochs: tuple[int, int],
                  memory: dict[str, int] | None,
                  compile_s: float | None, cache: str = '') -> str:
  """The lines a training run starts with, as one text block.

  Args:
    devices: the devices the run uses.
    dataset: a `data.Dataset`.
    n_params: trainable parameters (of every run of a stack).
    n_steps: optimizer steps per epoch.
    batch_size: training rows per step.
    kernel: the sparse-product kernel.
    model: the config's model name (and the runs of a stack).
    workdir: where logs and checkpoints go.
    epochs: (first, last) epoch this start will run, 0-based, inclusive.
    memory: `peak_memory_bytes` of the compiled epoch, or None.
    compile_s: seconds the epoch took to compile, or None.
    cache: where the compiled programs came from
      (`compilation_cache.CacheStats.describe`), or ''.
  """
  kinds = sorted({f'{d.platform}:{d.device_kind}' for d in devices})
  n_valid = int(dataset.split('valid')[0][-1])
  n_test = int(dataset.split('test')[0][-1])
  first, last = epochs
  lines = [
      f'device    {len(devices)} x {", ".join(kinds)}',
      f'data      {dataset.path}',
      f'          {dataset.n_users:,} users, {dataset.n_items:,} items; '
      f'rows {dataset.n_train:,} train, {n_valid:,} valid, {n_test:,} test',
      f'model     {model}: {n_params:,} parameters',
      f'epoch     {n_steps:,} steps of {batch_size:,} rows; kernel {kernel}',
  ]
  if memory is not None:
    lines.append(
        f'memory    estimated peak {_mib(memory["peak"])} per device (XLA: '
        f'{_mib(memory["argument"])} arguments + {_mib(memory["temp"])} '
        'temporaries)')
  if compile_s is not None:
    lines.append(f'compiled  in {compile_s:.1f}s'
                 + (f' ({cache})' if cache else ''))
  lines.append(f'run       epochs {first}..{last} -> {workdir}'
               if first <= last else
               f'run       finished already ({workdir})')
  return '\n'.join(lines)


def log_ks(topk) -> tuple[int, ...]:
  """The cut-offs shown in log lines: 10 and 20 when computed, else the
  first two of `topk` (every metric is in metrics.jsonl regardless)."""
  topk = tuple(topk)
  shown = tuple(k for k in (10, 20) if k in topk)
  return shown if len(shown) == 2 else topk[:2]


def format_metrics(m: dict[str, float], ks=(10, 20)) -> str:
  return ' '.join(f'R@{k}={m[f"recall@{k}"]:.4f} N@{k}={m[f"ndcg@{k}"]:.4f}'
                  for k in ks)


def _losses(losses: dict[str, float]) -> str:
  parts = ' + '.join(f'{k} {v:.4g}' for k, v in losses.items())
  return f'loss {sum(losses.values()):.4f} = {parts}'


def epoch_line(*, epoch: int, final_epoch: int, train_s: float,
               steps_per_s: float, eval_s: float, eta_s: float,
               runs: Sequence[dict[str, Any]]) -> str:
  """One epoch's summary: timing, then each run's losses and metrics.

  One run gives two lines (timing and losses; valid and test); a stack one
  line of timing and one per run trained this epoch.

  Args:
    epoch: 0-based; final_epoch: the last the run may reach.
    train_s, steps_per_s, eval_s: the epoch's timing.
    eta_s: an upper bound on the rest of the run (early stopping).
    runs: per run: 'losses' (the epoch's mean loss parts), 'valid' and
      'test' (formatted metrics, `format_metrics`), 'improved' (a new best
      validation metric), and for a stack 'label' (e.g. 'run 1 (seed 1)')
      and 'stopped' (early stop or divergence this epoch: its reason).
  """
  from mentor_jax import progress  # pylint: disable=g-import-not-at-top
  head = (f'epoch {epoch}/{final_epoch}  train {train_s:.2f}s '
          f'({steps_per_s:.1f} steps/s)  eval {eval_s:.2f}s  '
          f'ETA <= {progress.format_duration(eta_s)}')
  if len(runs) == 1 and 'label' not in runs[0]:
    run = runs[0]
    return (f'{head}  {_losses(run["losses"])}\n  valid {run["valid"]}  |  '
            f'test {run["test"]}' + ('  * best' if run['improved'] else ''))
  lines = [head]
  for run in runs:
    if 'valid' not in run:  # Diverged: no metrics this epoch.
      lines.append(f'  {run["label"]}: {run["stopped"]}')
      continue
    lines.append(f'  {run["label"]}: {_losses(run["losses"])}  |  valid '
                 f'{run["valid"]}  |  test {run["test"]}'
                 + ('  * best' if run['improved'] else '')
                 + (f'  ({run["stopped"]})' if run.get('stopped') else ''))
  return '\n'.join(lines)


class transient:  # pylint: disable=invalid-name
  """A status line shown on a terminal while a slow step runs, then erased.

  Nothing is written when `stream` (stderr by default) is not a terminal.
  """

  def __init__(self, text: str, stream: Any = None):
    self._text = text
    self._stream = stream or sys.stderr

  def __enter__(self) -> 'transient':
    if self._stream.isatty():
      self._stream.write(self._text)
      self._stream.flush()
    return self

  def __exit__(self, *exc: Any) -> None:
    if self._stream.isatty():
      self._stream.write('\r\x1b[K')
      self._stream.flush()
