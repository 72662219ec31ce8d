"""A run's workdir: one writer at a time, atomic files, tolerant logs.

Three mechanisms, one each for a class of faults:
  * `Lock`: an advisory `flock` on `<workdir>/.lock`, held while a trainer
    runs. The kernel drops it when the process dies (kill -9 included), so
    it never goes stale; a second trainer is refused with the holder's pid.
  * `write_text_atomic`: a whole-file write goes to a temporary file in the
    same folder, is fsync'ed, then renamed over the target. A crash or a
    full disk leaves the old file or the new one, never half of one, and
    removes the temporary file.
  * `append_line` / `read_jsonl`: the metrics log is appended one line at a
    time; a line cut short by a crash or a full disk is skipped on reading
    (and dropped by the next resume), never fatal.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import socket
import subprocess
import time
from typing import Any

from mentor_jax.errors import OutputExistsError
from mentor_jax.errors import WorkdirBusyError
from mentor_jax.errors import storage_error

LOCK_NAME = '.lock'


class Lock:
  """Exclusive use of a workdir by one trainer (a context manager)."""

  def __init__(self, workdir: str | pathlib.Path):
    self.path = pathlib.Path(workdir) / LOCK_NAME
    self._fd: int | None = None

  def acquire(self) -> 'Lock':
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise WorkdirBusyError(
          f'{self.path.parent} is in use by another trainer ({holder}). Wait '
          'for it to finish, stop it, or use another --workdir.') from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                             'since': time.strftime('%Y-%m-%d %H:%M:%S')})
             .encode())
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # Closing the descriptor drops the flock.
      self._fd = None

  def __enter__(self) -> 'Lock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _read_holder(fd: int) -> str:
  try:
    info = json.loads(os.pread(fd, 4096, 0).decode() or '{}')
  except (OSError, ValueError):
    info = {}
  if not info:
    return 'process id unknown'
  return (f'process id {info.get("pid")} on {info.get("host")}, since '
          f'{info.get("since")}')


def write_text_atomic(path: str | pathlib.Path, text: str) -> None:
  """Replaces `path` with `text` in one step (see the module docstring).

  Raises:
    StorageError: the disk is full; nothing is left behind.
  """
  # surrogateescape: text from a command-line argument that was not UTF-8
  # (a --title, a path) is written back as the bytes it came as.
  write_bytes_atomic(path, text.encode('utf-8', 'surrogateescape'))


def write_bytes_atomic(path: str | pathlib.Path, content: bytes) -> None:
  """`write_text_atomic` for bytes (e.g. an .npz built in memory)."""
  path = pathlib.Path(path)
  tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
  try:
    with open(tmp, 'wb') as f:
      f.write(content)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    tmp.unlink(missing_ok=True)
    full = storage_error(e, str(path))
    if full is not None:
      raise full from e
    raise


def check_output(path: str | pathlib.Path, *, overwrite: bool = False
                 ) -> None:
  """Refuses an output path the user named that holds something already.

  A command never replaces a file it did not create unless told to; called
  before the work, so that a refusal costs nothing.

  Raises:
    OutputExistsError: `path` is a folder, exists and not `overwrite`, or
      a folder on its way is a file (missing folders are made when
      written, `write_output`).
  """
  path = pathlib.Path(path)
  if path.is_dir():
    raise OutputExistsError(f'{path} is a folder; name a file to write')
  if path.exists() and not overwrite:
    raise OutputExistsError(f'{path} exists; choose another name, or pass '
                            '--overwrite to replace it')
  check_parents(path)


def check_parents(path: pathlib.Path) -> None:
  """Refuses an output path whose nearest existing parent is a file (the
  missing folders after it are made when written).

  Raises:
    OutputExistsError: naming the path and the file on its way.
  """
  for parent in path.parents:
    if parent.exists():
      if not parent.is_dir():
        raise OutputExistsError(f'{path}: {parent} is a file, not a folder')
      break


def write_output(path: str | pathlib.Path, text: str, *,
                 overwrite: bool = False) -> None:
  """Writes a file the user named (--out, --json-out), atomically; makes
  the folders on its way that do not exist yet."""
  check_output(path, overwrite=overwrite)
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  write_text_atomic(path, text)


def write_json_atomic(path: str | pathlib.Path, obj: Any) -> None:
  write_text_atomic(path, json.dumps(obj, indent=2) + '\n')


def append_line(path: str | pathlib.Path, line: str) -> None:
  """Appends `line` and a newline with one write call.

  Raises:
    StorageError: the disk is full (the partial line, if any, is what
      `read_jsonl` and `truncate_jsonl` skip).
  """
  try:
    with open(path, 'a') as f:
      f.write(line + '\n')
  except OSError as e:
    full = storage_error(e, str(path))
    if full is not None:
      raise full from e
    raise


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
  """The JSON objects of a JSON-lines file; cut or damaged lines skipped."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  out = []
  for line in path.read_text(errors='replace').splitlines():
    line = line.strip()
    if not line:
      continue
    try:
      record = json.loads(line)
    except ValueError:
      continue  # A line cut short by a crash or a full disk.
    if isinstance(record, dict):
      out.append(record)
  return out


def truncate_jsonl(path: str | pathlib.Path, keep) -> None:
  """Rewrites `path` (atomically) with the parseable records `keep` accepts.

  Args:
    path: a JSON-lines file; nothing happens if it does not exist.
    keep: record -> bool.
  """
  path = pathlib.Path(path)
  if not path.exists():
    return
  kept = [json.dumps(r) + '\n' for r in read_jsonl(path) if keep(r)]
  write_text_atomic(path, ''.join(kept))


# The first line of every page the report writes (report, compare): it may
# replace those.
PAGE_MARKER = '<!-- written by python -m mentor_jax.report -->'
# The PNG's Software text chunk, for the same purpose.
PNG_SOFTWARE = 'mentor_jax.report'


def git_tracked(path: pathlib.Path) -> bool:
  """Whether git tracks `path` (False outside a repository or without git)."""
  path = path.absolute()
  folder = path.parent
  while not folder.is_dir():  # git -C needs a folder that exists.
    folder = folder.parent
  try:
    done = subprocess.run(
        ['git', '-C', str(folder), 'ls-files', '--error-unmatch', '--',
         str(path)], capture_output=True, check=False, timeout=30)
  except (OSError, subprocess.TimeoutExpired):
    return False
  return done.returncode == 0


def written_by_report(path: pathlib.Path) -> bool:
  """Whether `path` is a page or figure that the report wrote."""
  try:
    if path.suffix.lower() == '.png':
      from PIL import Image  # pylint: disable=g-import-not-at-top
      with Image.open(path) as image:
        return image.info.get('Software') == PNG_SOFTWARE
    with path.open(errors='replace') as f:
      return f.readline().strip() == PAGE_MARKER
  except Exception:  # pylint: disable=broad-except
    return False  # Unreadable or not an image: not ours.


def check_page_output(path: pathlib.Path, *, overwrite: bool) -> None:
  """`check_output` for a page or figure of the report: a file git tracks
  is refused always, another existing one unless the report wrote it.

  Raises:
    OutputExistsError: with what to do instead.
  """
  if git_tracked(path):
    raise OutputExistsError(
        f'{path} is tracked by git; the report never writes over it. Write '
        'to another path (--out/--png) and copy it over if you mean to.')
  if path.exists() and not path.is_dir() and written_by_report(path):
    return
  check_output(path, overwrite=overwrite)
