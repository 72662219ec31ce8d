"""Where a run's epoch records go: one small interface, several writers.

The shape of CLU's `MetricWriter` (google/CommonLoopUtils
`metric_writers/interface.py`: write, flush, close; `MultiWriter` fans out),
without depending on CLU, which imports TensorFlow. A record is one epoch's
dict as `metrics.jsonl` holds it: {'epoch', 'step', 'loss': {part: mean},
'train_time_s', 'eval_time_s', 'valid': {...}, 'test': {...},
'best_epoch', ...}.

`run_writer` builds a run's writers: `metrics.jsonl` (the record; a resume
first drops the epochs it redoes) and TensorBoard events (a view of it,
`events.py`), on process 0 only.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from mentor_jax import events
from mentor_jax import rundirs
from mentor_jax import workdir as workdir_lib


class MetricWriter(Protocol):
  """Takes one epoch's record at a time."""

  def write(self, record: Mapping[str, Any]) -> None:
    ...

  def close(self) -> None:
    ...


class JsonlWriter:
  """Appends one JSON object per line to `<run_dir>/metrics.jsonl`.

  Read back tolerantly (`rundirs.read_metrics`): a line cut short by a
  crash or a full disk is skipped, and dropped by the next resume.
  """

  def __init__(self, run_dir: str | pathlib.Path):
    self.path = pathlib.Path(run_dir) / rundirs.METRICS_FILE

  def truncate_after(self, epoch: int) -> None:
    """Drops records of epochs after `epoch` (a resume replays them)."""
    workdir_lib.truncate_jsonl(
        self.path, lambda r: isinstance(r.get('epoch'), int)
        and r['epoch'] <= epoch)

  def write(self, record: Mapping[str, Any]) -> None:
    workdir_lib.append_line(self.path, json.dumps(record))

  def close(self) -> None:
    pass


class MultiWriter:
  """Writes every record to each of `writers`, in order."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self.writers = list(writers)

  def write(self, record: Mapping[str, Any]) -> None:
    for w in self.writers:
      w.write(record)

  def close(self) -> None:
    for w in self.writers:
      w.close()


def run_writer(run_dir: str | pathlib.Path, *, resume_after: int,
               chief: bool = True) -> MetricWriter:
  """A run's writers, its earlier records kept through `resume_after`.

  Args:
    run_dir: the run's folder (a single run's workdir, or runs/<k>).
    resume_after: the last epoch the run keeps (-1 for a fresh start);
      later records are dropped from metrics.jsonl, and TensorBoard's
      events are rewritten from what remains.
    chief: False on processes other than 0 of a multi-host run, which
      write nothing.
  """
  if not chief:
    return MultiWriter([])
  jsonl = JsonlWriter(run_dir)
  jsonl.truncate_after(resume_after)
  board = events.TensorBoardWriter(run_dir, rundirs.read_metrics(run_dir))
  return MultiWriter([jsonl, board])
