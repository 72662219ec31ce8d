"""SIGINT and SIGTERM during training: stop between epochs, resumable."""

from __future__ import annotations

import signal
import threading

from absl import logging


class StopSignals:
  """SIGINT and SIGTERM set a flag that the training loop checks per epoch.

  A compiled epoch cannot be interrupted safely, so the first signal only
  asks the loop to save and stop after the current epoch; a second Ctrl-C
  raises KeyboardInterrupt as usual (in-flight saves are still awaited).
  Handlers are installed only in the main thread (Python allows no other)
  and the previous ones are restored on exit.
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

  @property
  def name(self) -> str | None:
    return None if self.signum is None else signal.Signals(self.signum).name

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    logging.warning('%s received: stopping after the current epoch (saving a '
                    'checkpoint first); press Ctrl-C again to abort now.',
                    signal.Signals(signum).name)

  def __enter__(self) -> 'StopSignals':
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous.clear()
