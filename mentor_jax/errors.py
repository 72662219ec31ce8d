"""The project's error types, each with its own exit status, and the CLI
wrapper that turns them into one `error: <message>` line.

A user-facing command never prints a traceback for bad input or a fault it
knows: `run_cli` catches these types (and data_prep's `DataError`), prints
the message and exits with the type's status; `--debug` re-raises, so the
traceback is there when a developer wants it.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Callable

from data_prep.format import DataError


class UserError(Exception):
  """Base of the errors a user can fix; `exit_code` is the CLI status."""

  exit_code = 1


class ConfigError(UserError, ValueError):
  """A config key is unknown, or its value is not allowed."""

  exit_code = 2


class CheckpointError(UserError, ValueError):
  """No usable checkpoint, or one written for another model or dataset."""

  exit_code = 4


class WorkdirBusyError(UserError):
  """Another live process holds the workdir's lock."""

  exit_code = 5


class OutputExistsError(UserError):
  """An output file the user named exists (and --overwrite was not given)."""

  exit_code = 2


class StorageError(UserError, OSError):
  """A write failed for lack of space (or a file-size limit)."""

  exit_code = 6

  def __str__(self) -> str:
    return self.strerror or super().__str__()


class TrainingDivergedError(UserError, FloatingPointError):
  """A loss part became NaN or inf."""

  exit_code = 7


class ResultFileError(UserError, ValueError):
  """A result file (result.json, per_user_*.npz) is missing or malformed."""


# data_prep cannot import this package: its DataError carries its own
# status (3) in the same table.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def no_space_error(exc: BaseException) -> OSError | None:
  """The ENOSPC-like OSError in `exc`'s chain of causes, if there is one.

  Orbax and tensorstore wrap the OSError of a failed write in their own
  exception types; walking __cause__ / __context__ finds it.
  """
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
      return exc
    text = str(exc)
    # tensorstore reports the OS error inside its own message.
    for code in NO_SPACE_ERRNOS:
      if os.strerror(code) in text or f"os_error_code='{code}'" in text:
        return OSError(code, os.strerror(code))
    exc = exc.__cause__ or exc.__context__
  return None


def storage_error(exc: BaseException, where: str) -> StorageError | None:
  """A StorageError naming `where`, if `exc` is a lack of space."""
  found = no_space_error(exc)
  if found is None:
    return None
  path = found.filename or where
  code = found.errno or errno.ENOSPC
  return StorageError(
      code, f'no space left writing {path} ({os.strerror(code)}). Free some '
      'space and run the same command again: training resumes from the last '
      'complete checkpoint.')


def run_cli(main: Callable[[], int | None], *, debug: bool) -> int:
  """Runs `main`; known errors become one stderr line and an exit status.

  Args:
    main: the command; returns its exit status (None means 0).
    debug: re-raise instead, so that the traceback is printed.

  Returns:
    The exit status.
  """
  try:
    return main() or 0
  except (UserError, DataError) as e:
    if debug:
      raise
    print(f'error: {e}', file=sys.stderr)
    return e.exit_code
  except OSError as e:
    if debug:
      raise
    full = storage_error(e, getattr(e, 'filename', None) or '?')
    if full is not None:
      print(f'error: {full}', file=sys.stderr)
      return full.exit_code
    # Any other OS-level failure (a missing or unreadable file, a path that
    # is a folder): the OS's own words, with the path, are the message.
    print(f'error: {e.strerror or e}'
          + (f': {e.filename}' if e.filename else ''), file=sys.stderr)
    return 1
