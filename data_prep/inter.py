"""Reading and checking MMRec `<name>.inter` and feature `.npy` files.

Follows MMRec's loader (MENTOR src/utils_package/dataset.py): only userID,
itemID and x_label are read, ids are used as given (no remapping), U and I
are max id + 1 over the whole file, and valid/test rows of users without a
training row are dropped (`filter_out_cod_start_users`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.format import DataError

COLUMNS = ('userID', 'itemID', 'x_label')
SPLIT_NAMES = ('train', 'valid', 'test')


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


def _int_column(path: Path, df: pd.DataFrame, col: str) -> np.ndarray:
  """Returns column `col` as int64, or raises naming the first bad row."""
  raw = df[col]
  if pd.api.types.is_integer_dtype(raw.dtype):
    return raw.to_numpy(np.int64)
  # Accept integral floats such as "3.0" but nothing else: coerce, then find
  # the first value that is missing, non-numeric or fractional.
  num = pd.to_numeric(raw, errors='coerce').to_numpy(np.float64)
  bad = ~np.isfinite(num)
  bad[~bad] = num[~bad] != np.round(num[~bad])
  if bad.any():
    r = int(np.argmax(bad))
    raise DataError(
        f'{path}: column {col}: expected integers, found "{raw.iloc[r]}" '
        f'on line {r + 2}')  # +2: 1-based and the header line.
  return num.astype(np.int64)


def read_inter(path: str | os.PathLike) -> Interactions:
  """Reads and validates an MMRec .inter file.

  Args:
    path: tab-separated file with a header containing userID, itemID and
      x_label (other columns are ignored).

  Returns:
    The filtered interactions.

  Raises:
    DataError: missing file or column, non-integer or negative id, bad
      x_label, or an empty train/valid/test split after filtering.
  """
  path = Path(path)
  if not path.is_file():
    raise DataError(f'{path}: no such file')
  header = pd.read_csv(path, sep='\t', nrows=0).columns
  missing = [c for c in COLUMNS if c not in header]
  if missing:
    raise DataError(f'{path}: column(s) {", ".join(missing)} missing; '
                    f'expected {", ".join(COLUMNS)}, found {list(header)}')
  df = pd.read_csv(path, sep='\t', usecols=list(COLUMNS))
  user, item, label = (_int_column(path, df, c) for c in COLUMNS)
  for name, ids in (('userID', user), ('itemID', item)):
    if ids.size and ids.min() < 0:
      r = int(np.argmax(ids < 0))
      raise DataError(f'{path}: column {name}: expected ids >= 0, found '
                      f'{ids[r]} on line {r + 2}')
    if ids.size and ids.max() >= np.iinfo(np.int32).max:
      raise DataError(f'{path}: column {name}: ids must fit int32, found '
                      f'{ids.max()}')
  bad = (label < 0) | (label > 2)
  if bad.any():
    r = int(np.argmax(bad))
    raise DataError(f'{path}: column x_label: expected 0, 1 or 2, found '
                    f'{label[r]} on line {r + 2}')
  n_users = int(user.max()) + 1 if user.size else 0
  n_items = int(item.max()) + 1 if item.size else 0

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
    float32 [I, d] array.

  Raises:
    DataError: missing file, not 2-d, wrong row count, or a NaN/inf value.
  """
  path = Path(path)
  if not path.is_file():
    raise DataError(f'{path}: no such file')
  try:
    x = np.load(path, allow_pickle=False)
  except ValueError as e:
    raise DataError(f'{path}: not a plain numeric .npy ({e})') from e
  if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
    raise DataError(f'{path}: expected a 2-d numeric array, found '
                    f'{x.dtype} shape {x.shape}')
  if x.shape[0] != n_items:
    raise DataError(f'{path}: expected {n_items} rows (one per itemID, '
                    f'I = max itemID + 1), found {x.shape[0]}')
  # Cast first: float64 values beyond float32 range become inf and are caught.
  with np.errstate(over='ignore'):
    x = x.astype(np.float32, copy=False)
  finite = np.isfinite(x).all(axis=1)
  if not finite.all():
    r = int(np.argmin(finite))
    raise DataError(f'{path}: NaN or inf in row {r} (itemID {r}); '
                    f'{int((~finite).sum())} bad rows in total')
  return x
