"""TensorBoard event files of a training run, in its workdir.

  tensorboard --logdir runs      # every workdir under runs/ is one run

One event per epoch (step = epoch) with the scalars of the epoch's
`metrics.jsonl` record: `loss/<part>` and `loss/total`, `valid/<metric>` and
`test/<metric>` (recall, ndcg, precision @K), `time/train_s` and
`time/eval_s`.

The events are a view of `metrics.jsonl`, which stays the record: each start
of the trainer replays the kept records (a resume first drops the epochs it
will redo) into a fresh event file and removes the event files this module
wrote before, so TensorBoard never shows an epoch twice. Files it did not
write (no `FILE_SUFFIX`) are left alone.

Writer: tensorboardX (lanpa/tensorboardX; ~90 KB, needs only numpy,
packaging and protobuf, which orbax already brings), through its synchronous
`EventsWriter` and its `Event`/`Summary` protos: each epoch's event is on
disk when `write` returns, with no background thread or queue.
"""

from __future__ import annotations

import contextlib
import math
import pathlib
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

# Marks the event files this module writes (and may replace).
FILE_SUFFIX = '.mentor_jax'


@contextlib.contextmanager
def _without_torch() -> Iterator[None]:
  """Hides PyTorch while tensorboardX is imported.

  tensorboardX's writer module imports torch when it is installed (3 s and
  hundreds of MB here) only to accept torch tensors; scalars need none of
  it. A None entry in sys.modules makes `import torch` fail, which
  tensorboardX handles; the entry is removed again afterwards.
  """
  if 'torch' in sys.modules:  # Already paid for: nothing to hide.
    yield
    return
  sys.modules['torch'] = None  # type: ignore[assignment]
  try:
    yield
  finally:
    if sys.modules.get('torch', 0) is None:
      del sys.modules['torch']


def _tb():
  with _without_torch():
    # pylint: disable=g-import-not-at-top
    from tensorboardX import event_file_writer
    from tensorboardX.proto import event_pb2
    from tensorboardX.proto import summary_pb2
  return event_file_writer, event_pb2, summary_pb2


def record_scalars(record: dict[str, Any]) -> dict[str, float]:
  """The TensorBoard scalars of one `metrics.jsonl` record, by tag."""
  out = {f'loss/{k}': float(v) for k, v in record.get('loss', {}).items()}
  if record.get('loss'):
    out['loss/total'] = float(sum(record['loss'].values()))
  for split in ('valid', 'test'):
    out.update({f'{split}/{k}': float(v)
                for k, v in record.get(split, {}).items()})
  for key, tag in (('train_time_s', 'time/train_s'),
                   ('eval_time_s', 'time/eval_s')):
    if key in record:
      out[tag] = float(record[key])
  # NaN metrics (a split with no users) would only draw gaps.
  return {k: v for k, v in out.items() if math.isfinite(v)}


def event_files(logdir: str | pathlib.Path) -> list[pathlib.Path]:
  """The event files this module wrote in `logdir`, oldest name first."""
  return sorted(pathlib.Path(logdir).glob(
      f'events.out.tfevents.*{FILE_SUFFIX}'))


class TensorBoardWriter:
  """Writes each epoch's record as one TensorBoard event (a
  `writers.MetricWriter`).

  Args:
    logdir: the run's workdir.
    records: the records already in `metrics.jsonl`, replayed first.
  """

  def __init__(self, logdir: str | pathlib.Path,
               records: Iterable[dict[str, Any]] = ()):
    self._writer_mod, self._event_pb2, self._summary_pb2 = _tb()
    logdir = pathlib.Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    old = event_files(logdir)
    # Removed before the new file exists: both may carry the same name (a
    # restart within the same second), and metrics.jsonl holds everything
    # they held, replayed below.
    for path in old:
      path.unlink()
    self._writer = self._writer_mod.EventsWriter(str(logdir / 'events'),
                                                 FILE_SUFFIX)
    for record in records:
      self.write(record, flush=False)
    self._writer.flush()

  @property
  def path(self) -> pathlib.Path:
    """The event file being written."""
    # pylint: disable-next=protected-access
    return pathlib.Path(self._writer._file_name)

  def write(self, record: dict[str, Any], *, flush: bool = True,
            wall_time: float | None = None) -> None:
    """One event at step `record['epoch']`, on disk when this returns."""
    summary = self._summary_pb2.Summary(value=[
        self._summary_pb2.Summary.Value(tag=tag, simple_value=value)
        for tag, value in record_scalars(record).items()])
    event = self._event_pb2.Event(
        wall_time=time.time() if wall_time is None else wall_time,
        step=int(record['epoch']), summary=summary)
    self._writer.write_event(event)
    if flush:
      self._writer.flush()

  def close(self) -> None:
    self._writer.close()

