"""The data layer: a prepared `.npz` on the device, epochs of training batches.

`load_dataset` reads the file written by `data_prep` once. `DeviceData` holds
every constant array the jitted functions need; it is a pytree passed to them
as an argument (closing over it would bake ~100 MB of constants into the HLO).

`epoch_batches` reproduces MMRec's training sampler as an array program:
shuffle the training rows, cut them into batches of `batch_size` (the last one
partial, padded here and masked), and draw one negative per row uniformly from
the items that occur in train, redrawn while it is in the user's training set
(`all_items`: from every item id instead, as samplers outside MMRec do).
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from data_prep import format as npz_format
from mentor_jax.ops import sparse


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A prepared dataset on the host (numpy arrays plus metadata)."""

  path: pathlib.Path
  arrays: dict[str, np.ndarray]
  meta: dict[str, Any]
  # sha256 of the arrays' names, dtypes, shapes and bytes (`content_digest`):
  # the dataset's identity in checkpoint signatures.
  digest: str = ''

  @property
  def n_users(self) -> int:
    return int(self.meta['n_users'])

  @property
  def n_items(self) -> int:
    return int(self.meta['n_items'])

  @property
  def n_train(self) -> int:
    return int(self.arrays['train_item'].shape[0])

  @property
  def dim_v(self) -> int:
    return int(self.meta['feat_v']['dim'])

  @property
  def dim_t(self) -> int:
    return int(self.meta['feat_t']['dim'])

  def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-user CSR (indptr [U+1], items) of 'train', 'valid' or 'test'."""
    return self.arrays[f'{name}_indptr'], self.arrays[f'{name}_items']

  def release_device_only(self) -> None:
    """Drops the host copies of arrays that only `to_device` reads.

    Once they are on the device, the host copies only double the memory
    (the 4096-d features alone are 377 MB on Clothing). The per-user split
    CSRs and `train_item`, which evaluation and baselines use, stay.
    """
    for key in DEVICE_ONLY_KEYS:
      self.arrays.pop(key, None)


# Arrays that `to_device` copies and nothing on the host reads afterwards.
DEVICE_ONLY_KEYS = ('feat_v', 'feat_t', 'adj_indptr', 'adj_indices',
                    'adj_values', 'knn_v', 'knn_t', 'train_user', 'neg_items')


def content_digest(arrays: dict[str, np.ndarray]) -> str:
  """sha256 over every array's name, dtype, shape and bytes, keys sorted.

  The arrays rather than the file: a rebuilt `.npz` of the same data has
  other zip timestamps but the same digest.
  """
  h = hashlib.sha256()
  for key in sorted(arrays):
    x = np.ascontiguousarray(arrays[key])
    h.update(f'{key}:{x.dtype.str}:{x.shape};'.encode())
    h.update(x.reshape(-1).view(np.uint8))
  return h.hexdigest()


def load_dataset(path: str | pathlib.Path) -> Dataset:
  """Loads and validates a `.npz` written by `python -m data_prep`."""
  arrays, meta = npz_format.load_npz(path)
  return Dataset(pathlib.Path(path), arrays, meta, content_digest(arrays))


class DeviceData(NamedTuple):
  """Constant device arrays used by training and evaluation."""

  feat_v: jax.Array  # [I, d_v] f32
  feat_t: jax.Array  # [I, d_t] f32
  adj: sparse.Csr  # normalized user-item graph over N = U + I nodes
  knn_v: jax.Array  # [I, k] int32, the first k columns of the stored lists
  knn_t: jax.Array  # [I, k] int32
  train_user: jax.Array  # [n_train] int32
  train_item: jax.Array  # [n_train] int32
  train_indptr: jax.Array  # [U + 1] int32
  train_items: jax.Array  # [n_train] int32, sorted within each user
  neg_items: jax.Array  # [n_neg] int32, items that occur in train


def to_device(dataset: Dataset, knn_k: int) -> DeviceData:
  """Moves what training needs to the default device, once."""
  a = dataset.arrays
  stored_k = a['knn_v'].shape[1]
  if not 1 <= knn_k <= stored_k:
    raise ValueError(
        f'config knn_k={knn_k} but {dataset.path} stores {stored_k} '
        f'neighbours per item (field knn_v); expected 1 <= knn_k <= '
        f'{stored_k}. Re-run data_prep with --knn-k {knn_k}.')
  check_negatives_exist(a['train_indptr'], a['train_items'],
                        a['neg_items'].shape[0], dataset.path)
  put = jnp.asarray
  return DeviceData(
      feat_v=put(a['feat_v']),
      feat_t=put(a['feat_t']),
      adj=sparse.csr_from_numpy(
          a['adj_indptr'], a['adj_indices'], a['adj_values']),
      # Neighbour lists are sorted best first, so the first k columns are
      # exactly the top-k lists (ties already broken in data_prep).
      knn_v=put(np.ascontiguousarray(a['knn_v'][:, :knn_k])),
      knn_t=put(np.ascontiguousarray(a['knn_t'][:, :knn_k])),
      train_user=put(a['train_user']),
      train_item=put(a['train_item']),
      train_indptr=put(a['train_indptr']),
      train_items=put(a['train_items']),
      neg_items=put(a['neg_items']),
  )


def check_negatives_exist(indptr: np.ndarray, items: np.ndarray, n_neg: int,
                          path: Any = '') -> None:
  """Raises if some user has trained on every item that can be a negative.

  The sampler redraws until it finds an item outside the user's training
  set; for such a user it would never stop (MMRec's loop would not either).
  """
  indptr = np.asarray(indptr, np.int64)
  items = np.asarray(items)
  # Distinct items per user: entries that differ from their predecessor in
  # the same (sorted) row.
  new = np.ones(items.shape[0], bool)
  new[1:] = items[1:] != items[:-1]
  new[indptr[:-1][np.diff(indptr) > 0]] = True
  counts = np.concatenate([[0], np.cumsum(new)])
  distinct = counts[indptr[1:]] - counts[indptr[:-1]]
  full = np.flatnonzero(distinct >= n_neg)
  if full.size:
    raise ValueError(
        f'{path}: user {int(full[0])} (and {full.size - 1} more) has '
        f'training interactions with all {n_neg} items that occur in train '
        '(field train_items), so no negative item can be drawn for them; '
        'expected every user to leave at least one training item unseen.')


class Batches(NamedTuple):
  """One epoch of training rows, [n_steps, batch_size] each."""

  users: jax.Array
  pos_items: jax.Array
  neg_items: jax.Array
  mask: jax.Array  # f32, 0 on the padding of the last batch


def steps_per_epoch(n_train: int, batch_size: int) -> int:
  return -(-n_train // batch_size)


def contains_sorted(indptr: jax.Array, values: jax.Array, rows: jax.Array,
                    queries: jax.Array, max_row_len: int) -> jax.Array:
  """Whether `queries[b]` occurs in CSR row `rows[b]` (rows sorted).

  A vectorized lower-bound binary search with a static iteration count, so
  it is one fixed array program for any batch.

  Args:
    indptr: [R + 1] CSR row pointers.
    values: [nnz] sorted within each row.
    rows: [B] row of each query.
    queries: [B] values to look up.
    max_row_len: the longest row (static), bounds the number of halvings.

  Returns:
    [B] bool.
  """
  lo = indptr[rows]
  end = indptr[rows + 1]
  hi = end
  n_iter = max(1, int(max_row_len).bit_length())
  last = max(values.shape[0] - 1, 0)

  def halve(_, bounds):
    lo, hi = bounds
    active = lo < hi
    mid = (lo + hi) // 2
    less = values[jnp.minimum(mid, last)] < queries
    return (jnp.where(active & less, mid + 1, lo),
            jnp.where(active & ~less, mid, hi))

  lo, _ = jax.lax.fori_loop(0, n_iter, halve, (lo, hi))
  return (lo < end) & (values[jnp.minimum(lo, last)] == queries)


def sample_negatives(key: jax.Array, users: jax.Array, data: DeviceData,
                     max_row_len: int, all_items: bool = False) -> jax.Array:
  """One negative per user: uniform over train items, not in the user's set.

  Rows whose draw hits a training positive are redrawn (only those rows, with
  fresh randomness) until none does, as MMRec's sampler does row by row.
  `all_items`: uniform over every item id 0..I-1 instead (items that never
  occur in train included), as e.g. DiffMM's `TrnData.negSampling` draws.
  """
  if all_items:
    n_items = data.feat_v.shape[0]
    draw = lambda k: jax.random.randint(k, users.shape, 0, n_items)
  else:
    n_neg = data.neg_items.shape[0]
    draw = lambda k: data.neg_items[jax.random.randint(k, users.shape, 0,
                                                       n_neg)]

  def is_positive(items):
    return contains_sorted(data.train_indptr, data.train_items, users, items,
                           max_row_len)

  def cond(state):
    _, _, bad = state
    return jnp.any(bad)

  def body(state):
    i, items, bad = state
    items = jnp.where(bad, draw(jax.random.fold_in(key, i)), items)
    return i + 1, items, is_positive(items)

  first = draw(jax.random.fold_in(key, 0))
  _, items, _ = jax.lax.while_loop(cond, body,
                                   (1, first, is_positive(first)))
  return items


def epoch_batches(key: jax.Array, data: DeviceData, batch_size: int,
                  max_row_len: int, all_items: bool = False) -> Batches:
  """Shuffles the training rows and draws negatives for one epoch
  (`all_items`: see `sample_negatives`)."""
  n_train = data.train_user.shape[0]
  n_steps = steps_per_epoch(n_train, batch_size)
  perm_key, neg_key = jax.random.split(key)
  order = jax.random.permutation(perm_key, n_train)
  pad = n_steps * batch_size - n_train
  mask = jnp.concatenate([jnp.ones(n_train, jnp.float32),
                          jnp.zeros(pad, jnp.float32)])
  # Padding repeats row 0; its mask is 0, so it adds nothing to the losses.
  order = jnp.concatenate([order, jnp.zeros(pad, order.dtype)])
  users = data.train_user[order]
  pos = data.train_item[order]
  neg = sample_negatives(neg_key, users, data, max_row_len, all_items)
  shape = (n_steps, batch_size)
  return Batches(users.reshape(shape), pos.reshape(shape), neg.reshape(shape),
                 mask.reshape(shape))


def max_row_length(indptr: np.ndarray) -> int:
  return int(np.diff(indptr).max(initial=0))
