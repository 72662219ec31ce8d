"""Reading and checking MMRec `<name>.inter` and feature `.npy` files.

Follows MMRec's loader (MENTOR src/utils_package/dataset.py): only userID,
itemID and x_label are read, ids are used as given (no remapping), U and I
are max id + 1 over the whole file, and valid/test rows of users without a
training row are dropped (`filter_out_cod_start_users`).

`read_table` is the one reader of delimited text files in data_prep (the
converter's .inter, and the sources of `data_prep import` and
`text-features`): every way a file can be unreadable becomes a DataError
naming the file and the line.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.format import DataError
from data_prep.format import feature_magnitude_problem

COLUMNS = ('userID', 'itemID', 'x_label')
SPLIT_NAMES = ('train', 'valid', 'test')
# Ids are used as given, so U = max id + 1 rows are allocated per user array.
# Above this many ids at least half of them must occur, so that a stray huge
# id is refused instead of allocating gigabytes of empty users.
DENSE_ID_FLOOR = 1 << 20


def read_table(path: str | os.PathLike, *, sep: str = '\t',
               quoting: int = csv.QUOTE_NONE) -> pd.DataFrame:
  """Reads a delimited UTF-8 text file with a header, every cell a string.

  Args:
    path: the file.
    sep: field delimiter.
    quoting: a csv quoting constant; QUOTE_NONE for MMRec/RecBole tab files,
      whose text fields may contain quote characters.

  Returns:
    DataFrame of str columns (empty cells are '', never NaN), in file order.

  Raises:
    DataError: missing file, a folder, an empty file, bytes that are not
      UTF-8, or a line with the wrong number of fields.
  """
  path = Path(path)
  if path.is_dir():
    raise DataError(f'{path}: is a folder, expected a file')
  if not path.is_file():
    raise DataError(f'{path}: no such file')
  raw = path.read_bytes()
  try:
    text = raw.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    line = raw.count(b'\n', 0, e.start) + 1
    raise DataError(
        f'{path}: expected UTF-8 text, found the byte 0x{raw[e.start]:02x} '
        f'on line {line} (byte offset {e.start}); re-save the file as UTF-8'
        ) from e
  if not text.strip():
    raise DataError(f'{path}: empty file; expected a header line and rows')
  try:
    # header=None: the header line is parsed as a row, so a row with more
    # fields than the header is an error (with a header pandas would turn
    # the first column into an index and shift every column silently).
    df = pd.read_csv(io.StringIO(text), sep=sep, quoting=quoting,
                     header=None, dtype=str, keep_default_na=False,
                     na_filter=False, skip_blank_lines=True)
  except (pd.errors.ParserError, ValueError, csv.Error) as e:
    raise DataError(f'{path}: cannot parse as a {sep!r}-separated table '
                    f'({e})') from e
  header = [str(c).strip() for c in df.iloc[0]]
  repeated = sorted({c for c in header if header.count(c) > 1})
  if repeated:
    raise DataError(f'{path}: header line: expected distinct column names, '
                    f'found {", ".join(map(repr, repeated))} more than once')
  df = df.iloc[1:].reset_index(drop=True)
  df.columns = header
  return df


def check_columns(path: Path, header, wanted, hint: str = '') -> None:
  """Raises naming the missing columns and the ones found."""
  missing = [c for c in wanted if c not in header]
  if missing:
    raise DataError(f'{path}: column(s) {", ".join(missing)} missing; '
                    f'expected {", ".join(wanted)}, found {list(header)}'
                    + hint)


def int_column(path: Path, df: pd.DataFrame, col: str) -> np.ndarray:
  """Returns column `col` as int64, or raises naming the first bad row."""
  raw = df[col]
  if pd.api.types.is_integer_dtype(raw.dtype):
    return raw.to_numpy(np.int64)
  # Accept integral floats such as "3.0" but nothing else: coerce, then find
  # the first value that is missing, non-numeric, fractional or beyond int64.
  num = pd.to_numeric(raw, errors='coerce').to_numpy(np.float64)
  bad = ~np.isfinite(num) | (np.abs(num) >= 2.0**62)
  bad[~bad] = num[~bad] != np.round(num[~bad])
  if bad.any():
    r = int(np.argmax(bad))
    raise DataError(
        f'{path}: column {col}: expected integers, found "{raw.iloc[r]}" '
        f'on line {r + 2}')  # +2: 1-based and the header line.
  return num.astype(np.int64)


def check_id_space(path: Path, col: str, ids: np.ndarray) -> int:
  """Returns max id + 1 after checking that it is a sane allocation size.

  Raises:
    DataError: a negative id, an id beyond int32, or an id space mostly
      empty and larger than DENSE_ID_FLOOR (a stray huge id would make the
      converter allocate gigabytes for users or items that do not exist).
  """
  if ids.size == 0:
    return 0
  if ids.min() < 0:
    r = int(np.argmax(ids < 0))
    raise DataError(f'{path}: column {col}: expected ids >= 0, found '
                    f'{ids[r]} on line {r + 2}')
  hi = int(ids.max())
  if hi >= np.iinfo(np.int32).max:
    raise DataError(f'{path}: column {col}: ids must fit int32, found {hi} '
                    f'on line {int(np.argmax(ids)) + 2}')
  n = hi + 1
  if n > DENSE_ID_FLOOR:
    n_distinct = np.unique(ids).size
    if n > 2 * n_distinct:
      raise DataError(
          f'{path}: column {col}: the largest id is {hi} (line '
          f'{int(np.argmax(ids)) + 2}) but only {n_distinct} distinct ids '
          f'occur; ids are used as given (MMRec convention), so this would '
          f'allocate {n} rows. Expected ids close to 0..n-1; re-index with '
          '`python -m data_prep import --format mmrec`')
  return n


@dataclasses.dataclass(frozen=True)
class Interactions:
  """Rows of one .inter file after cold-start filtering, in file order.

  Attributes:
    user, item: int64 [n] ids.
    label: int8 [n] split label (0 train, 1 valid, 2 test).
    n_users, n_items: max id + 1 over the whole (unfiltered) file.
    n_cold_start_dropped: valid/test rows dropped because their user has no
      training row.
  """
  user: np.ndarray
  item: np.ndarray
  label: np.ndarray
  n_users: int
  n_items: int
  n_cold_start_dropped: int

  def split(self, label: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (users, items) of one split, in file order."""
    m = self.label == label
    return self.user[m], self.item[m]


def read_inter(path: str | os.PathLike) -> Interactions:
  """Reads and validates an MMRec .inter file.

  Args:
    path: tab-separated file with a header containing userID, itemID and
      x_label (other columns are ignored).

  Returns:
    The filtered interactions.

  Raises:
    DataError: missing, empty or non-UTF-8 file, missing column, non-integer
      or negative id, an id space too sparse to allocate, bad x_label, or an
      empty train/valid/test split after filtering.
  """
  path = Path(path)
  df = read_table(path)
  check_columns(path, df.columns, COLUMNS)
  if len(df) == 0:
    raise DataError(f'{path}: a header but no rows; expected one row per '
                    'interaction')
  user, item, label = (int_column(path, df, c) for c in COLUMNS)
  n_users = check_id_space(path, 'userID', user)
  n_items = check_id_space(path, 'itemID', item)
  bad = (label < 0) | (label > 2)
  if bad.any():
    r = int(np.argmax(bad))
    raise DataError(f'{path}: column x_label: expected 0, 1 or 2, found '
                    f'{label[r]} on line {r + 2}')

  # filter_out_cod_start_users: keep train rows and rows of users in train.
  in_train = np.zeros(n_users, bool)
  in_train[user[label == 0]] = True
  keep = (label == 0) | in_train[user]
  n_dropped = int(keep.size - keep.sum())
  user, item, label = user[keep], item[keep], label[keep].astype(np.int8)

  counts = np.bincount(label, minlength=3)
  for s, name in enumerate(SPLIT_NAMES):
    if counts[s] == 0:
      raise DataError(
          f'{path}: the {name} split (x_label == {s}) is empty'
          + (f' after dropping {n_dropped} cold-start rows' if n_dropped
             else ''))
  return Interactions(user, item, label, n_users, n_items, n_dropped)


def read_features(path: str | os.PathLike, n_items: int) -> np.ndarray:
  """Loads an item feature matrix as float32 and checks it.

  Args:
    path: .npy file with one row per itemID.
    n_items: I from the .inter file; the matrix must have exactly I rows.

  Returns:
    float32 [I, d] array with d >= 1.

  Raises:
    DataError: missing, empty or non-.npy file (a .npz included), not a 2-d
      real array, zero columns, wrong row count, a NaN/inf value (also
      after the cast: float64 values beyond float32 range), or a value of
      magnitude >= format.MAX_FEATURE_MAGNITUDE.
  """
  path = Path(path)
  if path.is_dir():
    raise DataError(f'{path}: is a folder, expected a .npy file')
  if not path.is_file():
    raise DataError(f'{path}: no such file')
  try:
    x = np.load(path, allow_pickle=False)
  except (ValueError, EOFError, OSError, zipfile.BadZipFile) as e:
    raise DataError(f'{path}: not a plain numeric .npy file ({e})') from e
  if not isinstance(x, np.ndarray):  # np.load opened a .npz archive.
    x.close()
    raise DataError(f'{path}: is a .npz archive; expected a single .npy '
                    'array (np.save) with one row per itemID')
  return check_features(x, str(path), n_rows=n_items,
                        rows_are=' (one per itemID, I = max itemID + 1)')


def check_features(x: np.ndarray, where: str, *, n_rows: int | None = None,
                   rows_are: str = '') -> np.ndarray:
  """A feature matrix checked and cast to float32 [rows, d >= 1].

  Args:
    x: the array as read.
    where: what to name in an error (a file, a file and a key).
    n_rows: the rows expected, if known; `rows_are` says what they are.

  Raises:
    DataError: not a 2-d real numeric array, zero columns, other than
      `n_rows` rows, a NaN/inf value (also after the cast: float64 values
      beyond float32 range), or a value of magnitude >=
      format.MAX_FEATURE_MAGNITUDE.
  """
  if np.iscomplexobj(x):
    raise DataError(f'{where}: expected real features, found complex dtype '
                    f'{x.dtype} (the imaginary part would be lost)')
  if (x.ndim != 2 or not np.issubdtype(x.dtype, np.number)):
    raise DataError(f'{where}: expected a 2-d numeric array, found '
                    f'{x.dtype} shape {x.shape}')
  if x.shape[1] == 0:
    raise DataError(f'{where}: expected at least one feature column, found '
                    f'shape {x.shape}')
  if n_rows is not None and x.shape[0] != n_rows:
    raise DataError(f'{where}: expected {n_rows} rows{rows_are}, found '
                    f'{x.shape[0]}')
  # Cast first: float64 values beyond float32 range become inf and are caught.
  with np.errstate(over='ignore'):
    x = x.astype(np.float32, copy=False)
  finite = np.isfinite(x).all(axis=1)
  if not finite.all():
    r = int(np.argmin(finite))
    raise DataError(f'{where}: NaN or inf in row {r} (itemID {r}); '
                    f'{int((~finite).sum())} bad rows in total')
  problem = feature_magnitude_problem(x)
  if problem:
    raise DataError(f'{where}: {problem}')
  return x
