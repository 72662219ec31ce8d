"""The mentor_jax .npz format: key names, atomic save and validated load.

One dataset is one uncompressed .npz of plain numpy arrays plus a JSON `meta`
string (see docs/DESIGN.md for the table of keys). `load_npz` checks
everything the model relies on, so a stale or truncated file fails here with
a message naming the file and field instead of deep inside a jitted step.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1

SPLITS = ('train', 'valid', 'test')

REQUIRED_KEYS = (
    'meta',
    'feat_v', 'feat_t',
    'train_user', 'train_item',
    'train_indptr', 'train_items',
    'valid_indptr', 'valid_items',
    'test_indptr', 'test_items',
    'adj_indptr', 'adj_indices', 'adj_values',
    'knn_v', 'knn_t',
    'neg_items',
)

REQUIRED_META = (
    'format_version', 'name', 'n_users', 'n_items', 'n_train', 'n_valid',
    'n_test', 'n_cold_start_dropped', 'knn_k', 'inter_file', 'inter_sha256',
    'feat_v', 'feat_t', 'created_by',
)


class DataError(ValueError):
  """Bad input data or a .npz that does not match the format."""


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray],
             meta: dict[str, Any]) -> None:
  """Writes `arrays` plus a JSON `meta` to `path` atomically.

  The data go to a temporary file in the same directory, which is fsynced and
  then renamed over `path`, so readers never see a half-written file and a
  failure leaves no file behind.

  Args:
    path: destination .npz file.
    arrays: name -> numpy array; must not contain 'meta'.
    meta: JSON-serialisable dict; `format_version` is set here.
  """
  path = Path(path)
  if 'meta' in arrays:
    raise ValueError("arrays must not contain the reserved key 'meta'")
  meta = dict(meta, format_version=FORMAT_VERSION)
  payload = dict(arrays, meta=np.array(json.dumps(meta, sort_keys=True)))
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp',
                             dir=path.parent)
  try:
    # mkstemp creates mode 0600; give the file the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, **payload)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def load_npz(path: str | os.PathLike
             ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Loads and validates a dataset .npz.

  Args:
    path: the .npz written by `save_npz` / `data_prep convert`.

  Returns:
    (arrays, meta): every key except 'meta' as numpy arrays, and the parsed
    meta dict.

  Raises:
    DataError: missing file, wrong format_version, missing key, or an array
      whose dtype, shape or values break the contract.
  """
  path = Path(path)
  if not path.is_file():
    raise DataError(f'{path}: no such file')
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except (OSError, ValueError) as e:
    raise DataError(f'{path}: not a readable .npz ({e})') from e
  if 'meta' not in arrays:
    raise DataError(f"{path}: key 'meta' missing (not a mentor_jax .npz)")
  try:
    meta = json.loads(str(arrays.pop('meta')))
  except json.JSONDecodeError as e:
    raise DataError(f"{path}: 'meta' is not valid JSON ({e})") from e
  found = meta.get('format_version')
  if found != FORMAT_VERSION:
    raise DataError(
        f'{path}: format_version {found!r}, expected {FORMAT_VERSION}; '
        're-run `python -m data_prep convert` to rebuild it')
  missing = [k for k in REQUIRED_KEYS if k != 'meta' and k not in arrays]
  missing += [f'meta.{k}' for k in REQUIRED_META if k not in meta]
  if missing:
    raise DataError(f'{path}: required keys missing: {", ".join(missing)}')
  _check_arrays(path, arrays, meta)
  return arrays, meta


def _check_arrays(path: Path, a: dict[str, np.ndarray],
                  meta: dict[str, Any]) -> None:
  """Checks dtypes, shapes and index ranges against meta's counts."""
  n_users, n_items = int(meta['n_users']), int(meta['n_items'])
  n_nodes = n_users + n_items

  def fail(key: str, expected: str, found: Any) -> None:
    raise DataError(f'{path}: {key}: expected {expected}, found {found}')

  def check(key: str, dtype: type, ndim: int,
            length: int | None = None) -> np.ndarray:
    x = a[key]
    if x.dtype != dtype:
      fail(key, f'dtype {np.dtype(dtype).name}', f'dtype {x.dtype}')
    if x.ndim != ndim:
      fail(key, f'{ndim}-d array', f'shape {x.shape}')
    if length is not None and x.shape[0] != length:
      fail(key, f'{length} rows', f'shape {x.shape}')
    return x

  def check_range(key: str, x: np.ndarray, hi: int) -> None:
    if x.size and (x.min() < 0 or x.max() >= hi):
      fail(key, f'values in [0, {hi})', f'range [{x.min()}, {x.max()}]')

  def check_indptr(key: str, x: np.ndarray, nnz: int) -> None:
    if x[0] != 0 or x[-1] != nnz or np.any(np.diff(x) < 0):
      fail(key, f'non-decreasing, from 0 to {nnz}',
           f'first {x[0]}, last {x[-1]}')

  for key in ('feat_v', 'feat_t'):
    check(key, np.float32, 2, n_items)
    if meta[key].get('dim') != a[key].shape[1]:
      fail(key, f"dim {meta[key].get('dim')} (meta)", f'shape {a[key].shape}')
  n_train = int(meta['n_train'])
  check_range('train_user', check('train_user', np.int32, 1, n_train), n_users)
  check_range('train_item', check('train_item', np.int32, 1, n_train), n_items)
  for s in SPLITS:
    n_s = int(meta[f'n_{s}'])
    indptr = check(f'{s}_indptr', np.int32, 1, n_users + 1)
    items = check(f'{s}_items', np.int32, 1, n_s)
    check_indptr(f'{s}_indptr', indptr, n_s)
    check_range(f'{s}_items', items, n_items)
    # Items ascend within each user; a drop is allowed only at a row start.
    drops = np.flatnonzero(np.diff(items) < 0) + 1
    if not np.isin(drops, indptr).all():
      fail(f'{s}_items', 'items ascending within each user', 'a descent')
  adj_indptr = check('adj_indptr', np.int32, 1, n_nodes + 1)
  nnz = int(adj_indptr[-1])
  check_indptr('adj_indptr', adj_indptr, nnz)
  check_range('adj_indices', check('adj_indices', np.int32, 1, nnz), n_nodes)
  check('adj_values', np.float32, 1, nnz)
  if nnz != 2 * n_train:
    fail('adj_indptr', f'nnz = 2 * n_train = {2 * n_train}', nnz)
  k = int(meta['knn_k'])
  for key in ('knn_v', 'knn_t'):
    x = check(key, np.int32, 2, n_items)
    if x.shape[1] != k:
      fail(key, f'shape [{n_items}, {k}] (meta.knn_k)', f'shape {x.shape}')
    check_range(key, x, n_items)
  neg = check('neg_items', np.int32, 1)
  check_range('neg_items', neg, n_items)
  if np.any(np.diff(neg) <= 0):
    fail('neg_items', 'strictly ascending (sorted unique)', 'a repeat/descent')
