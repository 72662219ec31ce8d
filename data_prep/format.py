"""The mentor_jax .npz format: key names, atomic writes and validated load.

One dataset is one uncompressed .npz of plain numpy arrays plus a JSON `meta`
string (see docs/DESIGN.md for the table of keys). `load_npz` checks
everything the converter guarantees (keys, dtypes, shapes, finite values,
index ranges, format version), so a stale, damaged or hand-edited file fails
here with a message naming the file and field instead of deep inside a
jitted step or after an epoch of training.
"""

from __future__ import annotations

import collections.abc
import json
import math
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

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

# Integer meta fields and their smallest allowed value.
# The converter refuses an empty split, so every split has a row.
_META_INTS = {'n_users': 1, 'n_items': 1, 'n_train': 1, 'n_valid': 1,
              'n_test': 1, 'n_cold_start_dropped': 0, 'knn_k': 1}


# Item features must stay below this magnitude: beyond it the float32
# sums of squares of a row (norms, cosine kNN, the models' projections)
# overflow to inf for a few thousand columns, and a row dominated by one huge
# entry makes every cosine 1.0 (kNN lists in id order).
MAX_FEATURE_MAGNITUDE = 1e15


def feature_magnitude_problem(x: np.ndarray) -> str | None:
  """What is wrong with finite features `x` [I, d], or None."""
  # max/min first: no [I, d] temporary for the (usual) good case.
  if not x.size or -MAX_FEATURE_MAGNITUDE < x.min() <= x.max() < (
      MAX_FEATURE_MAGNITUDE):
    return None
  flat = int(np.argmax(np.abs(x)))
  r, c = divmod(flat, x.shape[1])
  if abs(float(x[r, c])) < MAX_FEATURE_MAGNITUDE:
    return None
  big = int((np.abs(x) >= MAX_FEATURE_MAGNITUDE).any(axis=1).sum())
  return (f'value {float(x[r, c]):.3g} in row {r} (itemID {r}), column {c}; '
          f'{big} rows hold values of magnitude >= {MAX_FEATURE_MAGNITUDE:g}. '
          'Features must be below that: float32 norms and products overflow '
          'beyond it. Rescale them (e.g. divide by a constant)')


class DataError(ValueError):
  """Bad input data or a .npz that does not match the format."""

  exit_code = 3  # The CLIs' exit status (mentor_jax/errors.py uses it too).


def check_output_path(path: str | os.PathLike, *, force: bool = True) -> Path:
  """Refuses an output path that is a folder, or an existing file.

  Args:
    path: a file the caller is about to write.
    force: if False, an existing file is refused too (commands that must
      not overwrite a file they did not create pass False unless the user
      asked for --force).

  Returns:
    The path.

  Raises:
    DataError: the path is a folder, or exists and `force` is False.
  """
  path = Path(path)
  if path.is_dir():
    raise DataError(f'{path}: is a folder; expected the path of a file to '
                    'write')
  if not force and path.exists():
    raise DataError(f'{path}: already exists; not overwriting it (pass '
                    '--force to replace it)')
  return path


def write_files_atomically(
    writers: dict[Path, collections.abc.Callable[[BinaryIO], None]]) -> None:
  """Writes several files so that either all of them appear or none does.

  Each file is written to a temporary file in its own folder and fsynced;
  only when every one is complete are they renamed into place. A failure
  (disk full, an exception in a writer) removes the temporaries and leaves
  the destinations untouched.

  Args:
    writers: destination path -> function writing the content to a binary
      file object.
  """
  umask = os.umask(0)
  os.umask(umask)
  temps: dict[Path, str] = {}
  path = None
  try:
    for path, write in writers.items():
      path.parent.mkdir(parents=True, exist_ok=True)
      fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp',
                                 dir=path.parent)
      temps[path] = tmp
      # mkstemp creates mode 0600; give the file the usual umask-based mode.
      os.chmod(tmp, 0o666 & ~umask)
      with os.fdopen(fd, 'wb') as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    for path, tmp in temps.items():
      os.replace(tmp, path)
  except BaseException as e:
    for tmp in temps.values():
      Path(tmp).unlink(missing_ok=True)
    if isinstance(e, OSError) and e.filename is None and e.errno:
      # A failed write (disk full) names no file; name the destination.
      raise OSError(e.errno, e.strerror, str(path)) from e
    raise


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
  write_files_atomically({path: lambda f: np.savez(f, **payload)})


def _read_member(path: Path, z: zipfile.ZipFile,
                 info: zipfile.ZipInfo) -> np.ndarray:
  """Reads one array of the archive, checking its size before allocating.

  The .npy header declares dtype and shape; a damaged or crafted header could
  declare gigabytes. The declared size must equal the bytes the archive
  member actually holds before any array is allocated.
  """
  key = info.filename.removesuffix('.npy')
  with z.open(info) as f:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
      shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
      raise DataError(f'{path}: {key}: .npy format version {version}, '
                      'expected (1, 0) or (2, 0)')
    if dtype.hasobject:
      raise DataError(f'{path}: {key}: expected a plain numeric or string '
                      f'array, found dtype {dtype} (pickled objects are '
                      'never loaded)')
    declared = math.prod(shape) * dtype.itemsize
    held = info.file_size - f.tell()
    if declared != held:
      raise DataError(
          f'{path}: {key}: the header declares shape {shape} {dtype} '
          f'({declared} bytes) but the archive holds {held} bytes; the file '
          'is truncated or damaged')
    f.seek(0)
    x = np.lib.format.read_array(f, allow_pickle=False)
  return x.reshape(shape, order='F' if fortran else 'C')


def load_npz(path: str | os.PathLike
             ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Loads and validates a dataset .npz.

  Args:
    path: the .npz written by `save_npz` / `data_prep convert`.

  Returns:
    (arrays, meta): every key except 'meta' as numpy arrays, and the parsed
    meta dict.

  Raises:
    DataError: missing or damaged file, wrong format_version, missing key,
      or an array whose dtype, shape or values break the contract.
  """
  path = Path(path)
  if path.is_dir():
    raise DataError(f'{path}: is a folder, expected a .npz file')
  if not path.is_file():
    raise DataError(f'{path}: no such file')
  arrays = {}
  try:
    with zipfile.ZipFile(path) as z:
      for info in z.infolist():
        if not info.filename.endswith('.npy'):
          raise DataError(f'{path}: unexpected member {info.filename!r}; '
                          'expected only .npy arrays (not a mentor_jax .npz)')
        arrays[info.filename.removesuffix('.npy')] = _read_member(path, z,
                                                                  info)
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError,
          NotImplementedError, ValueError) as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f'{path}: not a readable .npz, the file is damaged or '
                    f'not a zip archive ({type(e).__name__}: {e})') from e
  if 'meta' not in arrays:
    raise DataError(f"{path}: key 'meta' missing (not a mentor_jax .npz)")
  meta_array = arrays.pop('meta')
  if meta_array.shape != () or meta_array.dtype.kind != 'U':
    raise DataError(f"{path}: meta: expected a 0-d unicode string, found "
                    f'dtype {meta_array.dtype} shape {meta_array.shape}')
  try:
    meta = json.loads(str(meta_array))
  except json.JSONDecodeError as e:
    raise DataError(f"{path}: 'meta' is not valid JSON ({e})") from e
  if not isinstance(meta, dict):
    raise DataError(f'{path}: meta: expected a JSON object, found '
                    f'{type(meta).__name__}')
  found = meta.get('format_version')
  if found != FORMAT_VERSION or isinstance(found, bool):
    raise DataError(
        f'{path}: format_version {found!r}, expected {FORMAT_VERSION}; '
        're-run `python -m data_prep convert` to rebuild it')
  missing = [k for k in REQUIRED_KEYS if k != 'meta' and k not in arrays]
  missing += [f'meta.{k}' for k in REQUIRED_META if k not in meta]
  if missing:
    raise DataError(f'{path}: required keys missing: {", ".join(missing)}')
  _check_meta(path, meta)
  _check_arrays(path, arrays, meta)
  return arrays, meta


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
  """Checks the types and ranges of the meta fields the loader relies on."""
  for key, lo in _META_INTS.items():
    v = meta[key]
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
      raise DataError(f'{path}: meta.{key}: expected an integer >= {lo}, '
                      f'found {v!r}')
  if meta['n_users'] + meta['n_items'] >= np.iinfo(np.int32).max:
    raise DataError(f'{path}: meta.n_users + meta.n_items: expected < 2^31 '
                    f"(int32 node ids), found {meta['n_users']} + "
                    f"{meta['n_items']}")
  for key in ('feat_v', 'feat_t'):
    v = meta[key]
    dim = v.get('dim') if isinstance(v, dict) else None
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
      raise DataError(f'{path}: meta.{key}: expected an object with an '
                      f'integer dim >= 1, found {v!r}')


def _check_arrays(path: Path, a: dict[str, np.ndarray],
                  meta: dict[str, Any]) -> None:
  """Checks dtypes, shapes, values and index ranges against meta's counts."""
  n_users, n_items = meta['n_users'], meta['n_items']
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

  def check_finite(key: str, x: np.ndarray) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
      where = np.unravel_index(int(np.argmax(bad)), x.shape)
      fail(key, 'finite values', f'{int(bad.sum())} NaN/inf, the first at '
           f'index {tuple(int(i) for i in where)}')

  for key in ('feat_v', 'feat_t'):
    x = check(key, np.float32, 2, n_items)
    if meta[key]['dim'] != x.shape[1]:
      fail(key, f"dim {meta[key]['dim']} (meta)", f'shape {x.shape}')
    check_finite(key, x)
    problem = feature_magnitude_problem(x)
    if problem:
      fail(key, f'values below {MAX_FEATURE_MAGNITUDE:g} in magnitude',
           problem)
  n_train = meta['n_train']
  train_user = check('train_user', np.int32, 1, n_train)
  check_range('train_user', train_user, n_users)
  check_range('train_item', check('train_item', np.int32, 1, n_train), n_items)
  for s in SPLITS:
    n_s = meta[f'n_{s}']
    indptr = check(f'{s}_indptr', np.int32, 1, n_users + 1)
    items = check(f'{s}_items', np.int32, 1, n_s)
    check_indptr(f'{s}_indptr', indptr, n_s)
    check_range(f'{s}_items', items, n_items)
    # Items ascend within each user; a drop is allowed only at a row start.
    drops = np.flatnonzero(np.diff(items) < 0) + 1
    if not np.isin(drops, indptr).all():
      fail(f'{s}_items', 'items ascending within each user', 'a descent')
  # The CSR of train and the row lists describe the same rows.
  per_user = np.bincount(train_user, minlength=n_users)
  if not np.array_equal(per_user, np.diff(a['train_indptr'])):
    fail('train_indptr', 'the per-user counts of train_user',
         'different counts')
  adj_indptr = check('adj_indptr', np.int32, 1, n_nodes + 1)
  nnz = 2 * n_train
  check_indptr('adj_indptr', adj_indptr, nnz)
  check_range('adj_indices', check('adj_indices', np.int32, 1, nnz), n_nodes)
  values = check('adj_values', np.float32, 1, nnz)
  check_finite('adj_values', values)
  # 1/sqrt(d_row d_col) with degrees >= 1 lies in (0, 1].
  if values.size and (values.min() <= 0 or values.max() > 1):
    fail('adj_values', 'values in (0, 1] (1/sqrt(d_row d_col))',
         f'range [{values.min()}, {values.max()}]')
  k = meta['knn_k']
  for key in ('knn_v', 'knn_t'):
    x = check(key, np.int32, 2, n_items)
    if x.shape[1] != k:
      fail(key, f'shape [{n_items}, {k}] (meta.knn_k)', f'shape {x.shape}')
    check_range(key, x, n_items)
  neg = check('neg_items', np.int32, 1)
  if neg.size == 0:
    fail('neg_items', 'at least one item (the items that occur in train)',
         'none')
  check_range('neg_items', neg, n_items)
  if np.any(np.diff(neg) <= 0):
    fail('neg_items', 'strictly ascending (sorted unique)', 'a repeat/descent')
