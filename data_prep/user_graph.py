"""DualGNN's user co-occurrence graph, on the host (numpy/scipy, no jax).

MMRec's `preprocessing/dualgnn-gen-u-u-matrix.py` links users by the number
of training items they share, C[u, v] = |I_u ∩ I_v| for u != v, and keeps
per user the (at most) 200 largest entries, largest first, as
`user_graph_dict.npy`: {u: [neighbour ids, counts as floats]} for every u.
It builds C as a dense U x U float32 matrix with a Python loop over user
pairs (6.2 GB and 7.8e8 set intersections for Clothing).

Here C = R Rᵀ with R the binary user x item training matrix (a repeated
training row counts once, as the script's item sets do), in blocks of rows
whose product fits a fixed budget, so nothing U x U is ever held.

Ties: only the first 40 entries of a list are ever read by the model
(`user_k`), and most counts are 1, so the tie order decides which
neighbours a user with more than 40 keeps. The script's `torch.topk`
leaves equal counts in an unspecified order that looks arbitrary (it is
not by id). Ordering ties by id instead would hand every such user the
lowest-id users: on TikTok that cost DualGNN about 12 % of its validation
Recall@20 against MMRec's own file (docs/curves/dualgnn_tiktok.md). So ties
are ordered by `pair_tie_key(u, v)`, a fixed hash of the pair: count
descending, then the key ascending, an order as arbitrary as torch's but
the same on every machine and in every run.

`neighbours_for_dataset` builds the lists once per dataset and keeps them
next to its .npz (not inside it, which would change the dataset's content
digest and so every checkpoint's signature); `load_mmrec_file` reads an
MMRec `user_graph_dict.npy` without running arbitrary pickled code and
validates it with errors that name the file and the entry.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from data_prep.format import DataError
from data_prep.format import write_files_atomically

# The preprocessing script's cap on a user's list.
MMREC_TOP = 200
# The name MMRec's dataset yamls give the file (`user_graph_dict_file`).
MMREC_FILE = 'user_graph_dict.npy'
# The lists of data/<name>.npz are kept in data/<name>.user_graph.npz.
SIDECAR_SUFFIX = '.user_graph.npz'
# Entries of R Rᵀ computed at once: about 40 bytes of temporaries each
# (indices, counts, row ids, the lexsort order and its gathers).
_BLOCK_ENTRIES = 1 << 22


# Bumped when the order of the lists changes: stored lists of another
# order are rebuilt.
TIE_RULE = 'count desc, pair_tie_key asc (splitmix64)'


def pair_tie_key(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """uint64 splitmix64 of the pair (u, v): the order among equal counts."""
  with np.errstate(over='ignore'):
    x = (np.asarray(u, np.uint64) << np.uint64(32)) | np.asarray(v, np.uint64)
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def cooccurrence_neighbours(indptr: np.ndarray, items: np.ndarray,
                            n_items: int, *, top: int = MMREC_TOP,
                            block_entries: int = _BLOCK_ENTRIES
                            ) -> tuple[np.ndarray, np.ndarray]:
  """Per user, the `top` users sharing most training items, most first.

  Args:
    indptr: [U + 1] per-user row pointers of the training rows.
    items: [n_train] item of each training row (duplicates allowed).
    n_items: I.
    top: list length cap (the script's 200).
    block_entries: bound on the entries of R Rᵀ held at once (memory only;
      a single row may exceed it).

  Returns:
    (nbr int32 [U, w], cnt int32 [U, w]), w = the longest list (<= top):
    row u holds u's neighbours by shared-item count descending, then
    `pair_tie_key(u, v)` ascending, padded at the end with nbr -1 and cnt 0.
    A user never lists itself.
  """
  indptr = np.asarray(indptr, np.int64)
  n_users = indptr.shape[0] - 1
  r = sp.csr_matrix((np.ones(len(items), np.int32),
                     np.asarray(items, np.int64), indptr),
                    shape=(n_users, n_items))
  r.sum_duplicates()
  r.data[:] = 1  # Item sets: a repeated training row counts once.
  r_t = r.T.tocsr()
  # A row of R Rᵀ has at most min(U, sum of its items' degrees) entries.
  bound = np.minimum(r @ np.diff(r_t.indptr).astype(np.int64), n_users)
  nbr = np.full((n_users, top), -1, np.int32)
  cnt = np.zeros((n_users, top), np.int32)
  lo = 0
  while lo < n_users:
    fits = np.searchsorted(np.cumsum(bound[lo:]), block_entries, 'right')
    hi = lo + max(1, int(fits))
    block = (r[lo:hi] @ r_t).tocsr()
    rows = np.repeat(np.arange(lo, hi), np.diff(block.indptr))
    cols, vals = block.indices, block.data
    off_diagonal = (cols != rows) & (vals > 0)
    rows, cols, vals = rows[off_diagonal], cols[off_diagonal], vals[
        off_diagonal]
    order = np.lexsort((pair_tie_key(rows, cols), -vals.astype(np.int64),
                        rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    rank = np.arange(rows.size) - np.searchsorted(rows, rows)
    keep = rank < top
    nbr[rows[keep], rank[keep]] = cols[keep]
    cnt[rows[keep], rank[keep]] = vals[keep]
    lo = hi
  width = int((nbr >= 0).sum(1).max(initial=0))
  return nbr[:, :width].copy(), cnt[:, :width].copy()


def list_lengths(nbr: np.ndarray) -> np.ndarray:
  """int32 [U]: the real entries of each padded row (nbr -1 pads)."""
  return (np.asarray(nbr) >= 0).sum(1).astype(np.int32)


def to_mmrec_dict(nbr: np.ndarray, cnt: np.ndarray) -> dict[int, list]:
  """The lists as MMRec's file holds them: {u: [[ids], [float counts]]}."""
  lengths = list_lengths(nbr)
  return {u: [nbr[u, :n].tolist(), cnt[u, :n].astype(float).tolist()]
          for u, n in enumerate(lengths.tolist())}


def _layout_problem(nbr: np.ndarray, cnt: np.ndarray,
                    n_users: int) -> str | None:
  """Why (nbr, cnt) are not lists as `cooccurrence_neighbours` returns them
  (None if they are): shapes, id range, padding at the end, counts >= 1,
  sorted by count descending then `pair_tie_key` ascending."""
  for name, x in (('nbr', nbr), ('cnt', cnt)):
    if x.dtype != np.int32 or x.ndim != 2 or x.shape[0] != n_users:
      return f'{name}: expected int32 [{n_users}, w], found {x.dtype} {x.shape}'
  if cnt.shape != nbr.shape:
    return f'cnt: expected the shape of nbr {nbr.shape}, found {cnt.shape}'
  real = nbr >= 0
  if nbr.size and (nbr.min() < -1 or nbr.max() >= n_users):
    return f'nbr: expected ids in [0, {n_users}) or -1'
  if np.any(real[:, 1:] & ~real[:, :-1]):
    return 'nbr: expected padding (-1) only at the end of a row'
  if np.any(real & (cnt < 1)) or np.any(~real & (cnt != 0)):
    return 'cnt: expected counts >= 1, and 0 on padding'
  both = real[:, 1:]
  down = cnt[:, 1:] < cnt[:, :-1]
  key = pair_tie_key(np.arange(n_users)[:, None], np.maximum(nbr, 0))
  tie_up = (cnt[:, 1:] == cnt[:, :-1]) & (key[:, 1:] > key[:, :-1])
  if np.any(both & ~(down | tie_up)):
    return ('expected rows sorted by count descending, then the pair key '
            f'({TIE_RULE})')
  return None


def train_rows_digest(indptr: np.ndarray, items: np.ndarray) -> str:
  """sha256 of the per-user training rows: what the lists derive from."""
  h = hashlib.sha256()
  for x in (np.asarray(indptr, np.int64), np.asarray(items, np.int64)):
    h.update(f'{x.shape};'.encode())
    h.update(np.ascontiguousarray(x).view(np.uint8))
  return h.hexdigest()


def sidecar_path(npz: str | os.PathLike) -> Path:
  """Where the lists of the dataset `npz` are kept: data/baby.npz ->
  data/baby.user_graph.npz."""
  npz = Path(npz)
  return npz.with_name(f'{npz.stem}{SIDECAR_SUFFIX}')


def read_sidecar(path: Path, n_users: int, digest: str
                 ) -> tuple[np.ndarray, np.ndarray] | None:
  """The stored lists, or None if absent, damaged, or of other rows."""
  if not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      stored = {k: z[k] for k in ('nbr', 'cnt', 'digest', 'top')}
      stored['tie_rule'] = z['tie_rule'] if 'tie_rule' in z.files else ''
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    logging.warning('%s: unreadable (%s); rebuilding the user graph', path, e)
    return None
  if str(stored['digest']) != digest or int(stored['top']) != MMREC_TOP or (
      str(stored['tie_rule']) != TIE_RULE):
    logging.warning('%s: built from other training rows or with another '
                    'tie order; rebuilding', path)
    return None
  problem = _layout_problem(stored['nbr'], stored['cnt'], n_users)
  if problem:
    logging.warning('%s: %s; rebuilding the user graph', path, problem)
    return None
  return stored['nbr'], stored['cnt']


def neighbours_for_dataset(npz: str | os.PathLike, indptr: np.ndarray,
                           items: np.ndarray, n_items: int
                           ) -> tuple[np.ndarray, np.ndarray]:
  """`cooccurrence_neighbours` of a prepared dataset, built once.

  The first call builds the lists and keeps them next to the .npz
  (`sidecar_path`, written atomically, tied to the training rows by their
  digest); later calls read them back. The .npz itself is left as it is,
  so its content digest (checkpoints, reports) does not change. A folder
  that cannot be written only costs a rebuild next time.
  """
  n_users = len(indptr) - 1
  digest = train_rows_digest(indptr, items)
  path = sidecar_path(npz)
  stored = read_sidecar(path, n_users, digest)
  if stored is not None:
    return stored
  nbr, cnt = cooccurrence_neighbours(indptr, items, n_items)
  payload = dict(nbr=nbr, cnt=cnt, digest=np.array(digest),
                 top=np.array(MMREC_TOP), tie_rule=np.array(TIE_RULE))
  try:
    write_files_atomically({path: lambda f: np.savez(f, **payload)})
  except OSError as e:
    logging.warning('%s: not written (%s); the user graph is rebuilt on the '
                    'next start', path, e)
  return nbr, cnt


class _ArrayUnpickler(pickle.Unpickler):
  """Rebuilds numpy arrays and plain Python values, nothing else.

  MMRec's file is a pickled dict inside a 0-d object array; a pickle can
  run any callable it names, so only numpy's array and scalar rebuilders
  are allowed through.
  """

  _ALLOWED = {(m, n) for m in ('numpy.core.multiarray',
                               'numpy._core.multiarray')
              for n in ('_reconstruct', 'scalar')} | {('numpy', 'ndarray'),
                                                      ('numpy', 'dtype')}

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f'refusing to load {module}.{name}')


def _read_object_npy(path: Path) -> Any:
  with open(path, 'rb') as f:
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read_header(f)
    if not dtype.hasobject or shape != ():
      raise DataError(f'{path}: expected the dict MMRec saves (a 0-d object '
                      f'array), found dtype {dtype} shape {shape}')
    return _ArrayUnpickler(f).load().item()


def load_mmrec_file(path: str | os.PathLike, n_users: int
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Reads an MMRec `user_graph_dict.npy` (or a folder holding one).

  The lists are used in the file's order (MMRec reads their first 40 as
  stored), so a file from MMRec's script keeps torch's tie order.

  Returns:
    (nbr int32 [U, w], cnt float32 [U, w]), padded with -1 / 0 at the end.

  Raises:
    DataError: a missing or unreadable file, or one that does not fit
      `n_users` users; the message names the file and the entry.
  """
  path = Path(path)
  if path.is_dir():
    path = path / MMREC_FILE
  if not path.is_file():
    raise DataError(f'{path}: no such file (config.user_graph_file: an '
                    f'MMRec {MMREC_FILE} or the folder holding it)')
  try:
    graph = _read_object_npy(path)
  except (pickle.UnpicklingError, ValueError, EOFError, OSError,
          AttributeError, TypeError) as e:
    raise DataError(f'{path}: not a readable {MMREC_FILE} ({type(e).__name__}'
                    f': {e})') from e
  if not isinstance(graph, dict):
    raise DataError(f'{path}: expected a dict {{user: [ids, counts]}}, found '
                    f'{type(graph).__name__}')
  if len(graph) != n_users or set(graph) != set(range(n_users)):
    raise DataError(f'{path}: expected one entry per user 0..{n_users - 1} '
                    f'(the dataset has {n_users} users), found {len(graph)} '
                    'entries')
  lists = []
  for u in range(n_users):
    entry = graph[u]
    try:
      ids, counts = entry
      ids = np.asarray(ids, np.float64).reshape(-1)
      counts = np.asarray(counts, np.float64).reshape(-1)
    except (TypeError, ValueError):
      raise DataError(f'{path}: user {u}: expected [neighbour ids, counts], '
                      f'found {str(entry)[:80]}') from None
    if ids.shape != counts.shape:
      raise DataError(f'{path}: user {u}: {ids.size} neighbour ids but '
                      f'{counts.size} counts')
    if ids.size and (np.any(ids != np.round(ids)) or ids.min() < 0
                     or ids.max() >= n_users):
      raise DataError(f'{path}: user {u}: neighbour ids must be integers in '
                      f'[0, {n_users})')
    if not np.all(np.isfinite(counts)):
      raise DataError(f'{path}: user {u}: counts must be finite numbers')
    lists.append((ids.astype(np.int32), counts.astype(np.float32)))
  width = max((ids.size for ids, _ in lists), default=0)
  nbr = np.full((n_users, width), -1, np.int32)
  cnt = np.zeros((n_users, width), np.float32)
  for u, (ids, counts) in enumerate(lists):
    nbr[u, :ids.size], cnt[u, :ids.size] = ids, counts
  return nbr, cnt
