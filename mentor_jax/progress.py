"""The training epoch's progress on the console, fed between its segments.

An epoch runs as a few segments of steps, dispatched at once (`epoch.py`,
`run_epoch`); the host waits for each segment's end in turn and calls
`EpochProgress.update` with the steps done. No callback sits inside the
compiled programs, so the progress bar costs them nothing and keeps them
cacheable (`compilation_cache.py`).

`EpochProgress` draws one line, redrawn in place at most 4 times a second,
when its stream is a terminal; otherwise it writes a plain log line at most
every 30 seconds. Shown: steps done of the total, steps/s, the ETA of the
epoch and of the run (an upper bound: early stopping may end it sooner).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

# Redraws of the terminal line, and plain log lines, at most this often.
TTY_INTERVAL_S = 0.25
LOG_INTERVAL_S = 30.0


def format_duration(seconds: float) -> str:
  """12s, 4m05s, 3h12m: short enough for a status line."""
  if seconds != seconds or seconds == float('inf'):  # NaN or inf
    return '?'
  s = int(round(seconds))
  if s < 60:
    return f'{s}s'
  if s < 3600:
    return f'{s // 60}m{s % 60:02d}s'
  return f'{s // 3600}h{s % 3600 // 60:02d}m'


class EpochProgress:
  """Progress of a training run's epochs, one epoch at a time.

  Usage: `start(epoch)` before launching the epoch's programs, `update(n)`
  as its segments finish, `finish(...)` after its outputs are on the host.

  Args:
    n_steps: optimizer steps per epoch.
    final_epoch: the last epoch the run may reach (0-based).
    stream: where the bar goes; stderr by default.
    tty: draw a bar (True) or write plain lines (False); default: whether
      `stream` is a terminal.
    log: writes one plain line (non-terminal mode); default: to `stream`.
    clock: seconds, monotonic (tests pass a fake).
    enabled: False makes every method a no-op (processes other than the
      first of a multi-host run).
  """

  def __init__(self, n_steps: int, final_epoch: int, *,
               stream: TextIO | None = None, tty: bool | None = None,
               log: Callable[[str], None] | None = None,
               clock: Callable[[], float] = time.perf_counter,
               enabled: bool = True):
    self.enabled = enabled
    self.n_steps = max(int(n_steps), 1)
    self.final_epoch = final_epoch
    self._stream = stream or sys.stderr
    self._tty = (self._stream.isatty() if tty is None else tty)
    self._log = log or (lambda line: print(line, file=self._stream,
                                           flush=True))
    self._clock = clock
    self._epoch = -1
    self._t0 = 0.0
    self._done = 0
    self._last_draw = float('-inf')
    self._drawn = False
    self._running = False  # between start and finish
    self._epoch_times: list[float] = []  # train + eval, seconds

  # The epoch's life.

  def __enter__(self) -> 'EpochProgress':
    return self

  def __exit__(self, *exc: Any) -> None:
    """A bar left half-drawn (an error) is erased."""
    if self._running and self._tty and self._drawn:
      self._stream.write('\r\x1b[K')
      self._stream.flush()
    self._running = False

  def start(self, epoch: int) -> None:
    """`epoch` starts now."""
    if not self.enabled:
      return
    self._epoch, self._done = epoch, 0
    self._t0 = self._last_draw = self._clock()
    self._drawn = False
    self._running = True

  def update(self, done: int) -> None:
    """`done` steps of the current epoch have finished."""
    if not self._running:
      return
    self._done = max(self._done, min(done, self.n_steps))
    now = self._clock()
    interval = TTY_INTERVAL_S if self._tty else LOG_INTERVAL_S
    if now - self._last_draw < interval:
      return
    self._last_draw = now
    self._emit(now)

  def finish(self, epoch_seconds: float | None = None) -> None:
    """Ends the epoch; on a terminal shows the full bar, then clears it.

    Args:
      epoch_seconds: the epoch's training plus evaluation time, for the run's
        ETA; the first epoch (it may include compilation) is not used once a
        second one is known.
    """
    if not self.enabled:
      return
    self._running = False
    self._done = self.n_steps
    if self._tty:
      self._emit(self._clock())  # The completed bar, then room for the
      self._stream.write('\r\x1b[K')  # epoch's summary line.
      self._stream.flush()
    if epoch_seconds is not None:
      self._epoch_times.append(epoch_seconds)

  # Numbers and drawing.

  def status(self, now: float | None = None) -> dict[str, float]:
    """done, total, steps/s, epoch ETA and run ETA (seconds) right now."""
    now = self._clock() if now is None else now
    elapsed = max(now - self._t0, 1e-9)
    rate = self._done / elapsed
    left = self.n_steps - self._done
    epoch_eta = left / rate if rate > 0 else float('inf')
    times = self._epoch_times[1:] or self._epoch_times
    per_epoch = (statistics.median(times) if times
                 else self.n_steps / rate if rate > 0 else float('inf'))
    epochs_after = max(self.final_epoch - self._epoch, 0)
    return {'done': self._done, 'total': self.n_steps, 'steps_per_s': rate,
            'epoch_eta_s': epoch_eta,
            'run_eta_s': epoch_eta + epochs_after * per_epoch}

  def line(self, now: float | None = None, width: int = 100) -> str:
    """The status line, at most `width` characters."""
    s = self.status(now)
    epoch = (f'epoch {self._epoch}/{self.final_epoch}')
    counts = f'{s["done"]}/{s["total"]}'
    tail = (f'{s["steps_per_s"]:.2f} steps/s  '
            f'epoch ETA {format_duration(s["epoch_eta_s"])}  '
            f'run ETA <= {format_duration(s["run_eta_s"])}')
    if not self._tty:
      pct = 100 * s['done'] / s['total']
      return f'{epoch}: {counts} steps ({pct:.0f}%)  {tail}'
    bar_width = min(30, width - len(epoch) - len(counts) - len(tail) - 6)
    if bar_width >= 5:
      fill = int(bar_width * s['done'] / s['total'])
      bar = '[' + '#' * fill + '-' * (bar_width - fill) + ']'
      text = f'{epoch} {bar} {counts}  {tail}'
    else:
      text = f'{epoch} {counts}  {tail}'
    return text[:width]

  def _emit(self, now: float) -> None:
    if self._tty:
      width = shutil.get_terminal_size((100, 24)).columns - 1
      self._stream.write('\r' + self.line(now, width) + '\x1b[K')
      self._stream.flush()
      self._drawn = True
    else:
      self._log(self.line(now))
