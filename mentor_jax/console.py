"""What the commands print, and how they find their configs.

* `quiet_backend_probe`: JAX logs `Unable to initialize backend 'tpu'` (an
  INFO record of its backend probe) on every machine without a TPU. The
  filter drops exactly those records; the probe itself, the choice of
  device (GPU included) and JAX's warnings are untouched. Installed when
  `mentor_jax` is imported, before any backend starts.
* `setup_logging`: `HH:MM:SS message` lines instead of absl's
  `I1201 21:59:28.884928 139702279490432 train.py:299]` prefix.
* `startup_block`: the lines a training run starts with.
* `resolve_config_arg`: `--config` accepts a path, or the name of a config
  shipped in `mentor_jax/configs/` (`small`, `small.py`, `configs/small.py`),
  so commands work from any folder and with an installed package.
* `run_config_command`: the entry point of a command that takes `--config`
  (the two above, then absl's app.run).
"""

from __future__ import annotations

import logging
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging as absl_logging

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / 'configs'


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


def setup_logging() -> None:
  """Plain, short log lines for the command-line tools (absl's handler)."""
  absl_logging.get_absl_handler().setFormatter(_Formatter('%(message)s'))


def shipped_config(name: str) -> pathlib.Path | None:
  """The shipped config file `name` refers to, or None.

  `name` may be `small`, `small.py` or `configs/small.py`; anything after a
  ':' (a config argument, e.g. `baseline.py:lightgcn,baby`) is not part of
  the name.
  """
  stem = pathlib.PurePath(name).name.removesuffix('.py')
  if not stem or stem.startswith('_'):
    return None
  path = CONFIG_DIR / f'{stem}.py'
  return path if path.is_file() else None


def resolve_config_arg(argv: Sequence[str]) -> list[str]:
  """`argv` with a `--config` that is not an existing file replaced by the
  shipped config of that name (the config argument after ':' is kept).

  An existing path always wins; a name that matches nothing is left as it
  is, so the flag's own error reports it.
  """
  out = list(argv)
  for i, arg in enumerate(out):
    if arg in ('--config', '-config') and i + 1 < len(out):
      j, value, prefix = i + 1, out[i + 1], ''
    elif arg.startswith(('--config=', '-config=')):
      j, (prefix, value) = i, arg.split('=', 1)
      prefix += '='
    else:
      continue
    path, sep, config_arg = value.partition(':')
    if pathlib.Path(path).is_file():
      continue
    shipped = shipped_config(path)
    if shipped is not None:
      out[j] = prefix + str(shipped) + sep + config_arg
  return out


def run_config_command(main: Callable[[list[str]], Any]) -> None:
  """Runs an absl `main` whose `--config` is required, with plain log lines.

  The command's flags must already be defined (its module imported).
  """
  # pylint: disable-next=g-import-not-at-top
  from absl import app, flags
  flags.mark_flags_as_required(['config'])

  def main_with_console(argv):
    setup_logging()
    return main(argv)

  app.run(main_with_console, argv=resolve_config_arg(sys.argv))


def _mib(n_bytes: float) -> str:
  return (f'{n_bytes / 2**30:.2f} GiB' if n_bytes >= 2**30
          else f'{n_bytes / 2**20:.1f} MiB')


def peak_memory_bytes(compiled: Any) -> dict[str, int] | None:
  """XLA's memory analysis of a compiled program, per device, or None.

  `peak` = arguments + outputs - donated (aliased) + temporaries: every
  buffer of the program live at once, an upper bound on what it allocates.
  """
  analysis = getattr(compiled, 'memory_analysis', None)
  try:
    stats = analysis() if analysis is not None else None
  except Exception:  # pylint: disable=broad-except
    return None  # Some backends do not implement it.
  if stats is None:
    return None
  out = {name: int(getattr(stats, f'{name}_size_in_bytes', 0))
         for name in ('argument', 'output', 'alias', 'temp')}
  out['peak'] = (out['argument'] + out['output'] - out['alias']
                 + out['temp'])
  return out


def startup_block(*, devices: Sequence[Any], dataset: Any, n_params: int,
                  n_steps: int, batch_size: int, kernel: str, model: str,
                  workdir: str | pathlib.Path, epochs: tuple[int, int],
                  memory: dict[str, int] | None,
                  compile_s: float | None) -> str:
  """The lines a training run starts with, as one text block.

  Args:
    devices: the devices the run uses.
    dataset: a `data.Dataset`.
    n_params: trainable parameters.
    n_steps: optimizer steps per epoch.
    batch_size: training rows per step.
    kernel: the sparse-product kernel.
    model: the config's model name.
    workdir: where logs and checkpoints go.
    epochs: (first, last) epoch this start will run, 0-based, inclusive.
    memory: `peak_memory_bytes` of the compiled epoch, or None.
    compile_s: seconds the epoch took to compile, or None.
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
    lines.append(f'compiled  in {compile_s:.1f}s')
  lines.append(f'run       epochs {first}..{last} -> {workdir}'
               if first <= last else
               f'run       finished already ({workdir})')
  return '\n'.join(lines)


def epoch_line(*, epoch: int, final_epoch: int, losses: dict[str, float],
               train_s: float, steps_per_s: float, eval_s: float,
               eta_s: float, valid: str, test: str, improved: bool) -> str:
  """One epoch's summary: timing and losses, then the metrics, two lines.

  Args:
    epoch: 0-based; final_epoch: the last the run may reach.
    losses: the epoch's mean loss parts.
    train_s, steps_per_s, eval_s: the epoch's timing.
    eta_s: an upper bound on the rest of the run (early stopping).
    valid, test: the formatted metrics (`train.format_metrics`).
    improved: a new best validation metric.
  """
  from mentor_jax import progress  # pylint: disable=g-import-not-at-top
  parts = ' + '.join(f'{k} {v:.4g}' for k, v in losses.items())
  head = (f'epoch {epoch}/{final_epoch}  train {train_s:.2f}s '
          f'({steps_per_s:.1f} steps/s)  eval {eval_s:.2f}s  '
          f'ETA <= {progress.format_duration(eta_s)}  '
          f'loss {sum(losses.values()):.4f} = {parts}')
  return (f'{head}\n  valid {valid}  |  test {test}'
          + ('  * best' if improved else ''))


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
