"""Full ranking on the device: each user's top-K items, training items left out.

The kernel `evaluate` (metrics.py), `recommend` and the sharded evaluator
(distributed.py) all rank with:
  * every item is scored (user_emb @ item_emb.T, 'highest' precision by
    default); the excluded (training) items get -inf (the original uses
    -1e10, which orders identically);
  * ties: `jax.lax.top_k` puts the lower item index first among equal
    scores (PyTorch's `topk` leaves tie order unspecified, so results can
    differ from the original only when scores tie exactly);
  * ONE jitted function maps over fixed-size chunks of users, so one
    [chunk, I] score tile is live at a time; the per-user CSR rows it needs
    (exclusions, ground truth) are read as fixed windows of a gathered CSR.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class TopK(NamedTuple):
  """Per-user ranking results for the evaluated users.

  Attributes:
    users: [n] int32 ids of the evaluated users (ground truth non-empty),
      ascending.
    top_items: [n, k] int32 top-ranked item ids, best first.
    hits: [n, k] bool, whether each top item is in the user's ground truth.
    n_gt: [n] int64 |G_u| (number of ground-truth rows, duplicates counted).
  """
  users: np.ndarray
  top_items: np.ndarray
  hits: np.ndarray
  n_gt: np.ndarray


class ChunkedCsr(NamedTuple):
  """A per-user CSR restricted to the evaluated users, laid out for chunks.

  Attributes:
    items: [nnz + window] int32 item ids in evaluated-user order, padded.
    pos: [nnz + window] int32 position of each entry's user in the evaluated
      list; padding holds a position past every chunk, so it is dropped.
    chunk_start: [n_chunks] int32 first entry of each chunk.
    window: static number of entries read per chunk (max over chunks).
  """
  items: np.ndarray
  pos: np.ndarray
  chunk_start: np.ndarray
  window: int


def chunk_csr(indptr: np.ndarray, items: np.ndarray, users: np.ndarray,
              chunk_size: int, n_chunks: int) -> ChunkedCsr:
  """Gathers the CSR rows of `users` (vectorized) and computes chunk windows."""
  indptr = np.asarray(indptr, dtype=np.int64)
  items = np.asarray(items)
  counts = (indptr[users + 1] - indptr[users]) if users.size else (
      np.zeros(0, np.int64))
  total = int(counts.sum())
  sub_ptr = np.zeros(users.size + 1, dtype=np.int64)
  np.cumsum(counts, out=sub_ptr[1:])
  # Entry e of the gathered CSR comes from indptr[user] + (e - sub_ptr[pos]).
  pos = np.repeat(np.arange(users.size, dtype=np.int64), counts)
  src = indptr[users][pos] + (np.arange(total) - sub_ptr[pos])
  sub_items = items[src].astype(np.int32)

  bounds = np.minimum(np.arange(n_chunks + 1) * chunk_size, users.size)
  chunk_ptr = sub_ptr[bounds]
  # Round the window up to a power of two so that splits of similar size
  # (valid / test) share one compiled evaluation function.
  widest = int(np.max(np.diff(chunk_ptr))) if n_chunks else 0
  window = 1 << max(widest - 1, 0).bit_length()
  sentinel = n_chunks * chunk_size  # Past every chunk's rows.
  sub_items = np.concatenate([sub_items, np.zeros(window, np.int32)])
  pos = np.concatenate([pos, np.full(window, sentinel)]).astype(np.int32)
  return ChunkedCsr(sub_items, pos, chunk_ptr[:-1].astype(np.int32), window)


@functools.partial(
    jax.jit, static_argnames=('chunk_size', 'k', 'gt_window', 'mask_window',
                              'precision'))
def rank_chunks(user_emb, item_emb, users, gt_items, gt_pos, gt_start,
                mask_items, mask_pos, mask_start, *, chunk_size, k,
                gt_window, mask_window, precision):
  """Top-k items, hit flags and scores for all given users, chunk by chunk.

  Only one [chunk_size, I] score tile (plus two boolean tiles for the
  exclusion mask and the ground truth) is live at a time.
  """
  n_items = item_emb.shape[0]
  n_chunks = users.shape[0] // chunk_size

  def dense_rows(c, items, pos, start, window):
    # The chunk's CSR entries are contiguous; read a fixed-size window and
    # drop the entries that belong to later chunks (or padding) by making
    # their row index out of range.
    it = jax.lax.dynamic_slice(items, (start,), (window,))
    rows = jax.lax.dynamic_slice(pos, (start,), (window,)) - c * chunk_size
    rows = jnp.where(rows < chunk_size, rows, chunk_size)
    out = jnp.zeros((chunk_size, n_items), dtype=bool)
    return out.at[rows, it].set(True, mode='drop')

  def one_chunk(xs):
    c, gts, ms = xs
    u = jax.lax.dynamic_slice(users, (c * chunk_size,), (chunk_size,))
    scores = jnp.matmul(user_emb[u], item_emb.T, precision=precision)
    excluded = dense_rows(c, mask_items, mask_pos, ms, mask_window)
    scores = jnp.where(excluded, -jnp.inf, scores)
    top_scores, top = jax.lax.top_k(scores, k)
    truth = dense_rows(c, gt_items, gt_pos, gts, gt_window)
    hits = jnp.take_along_axis(truth, top, axis=1)
    return top.astype(jnp.int32), hits, top_scores

  top, hits, scores = jax.lax.map(
      one_chunk, (jnp.arange(n_chunks, dtype=jnp.int32), gt_start, mask_start))
  return top.reshape(-1, k), hits.reshape(-1, k), scores.reshape(-1, k)


def _padded_chunks(users: np.ndarray, chunk_size: int
                   ) -> tuple[int, int, np.ndarray]:
  """(chunk, n_chunks, users padded to whole chunks) for `users` (n > 0);
  a small request need not pay for a full-size chunk."""
  n = users.size
  chunk = min(chunk_size, n)
  n_chunks = -(-n // chunk)
  padded = np.zeros(n_chunks * chunk, np.int32)
  padded[:n] = users  # Padding rows score user 0 and are discarded.
  return chunk, n_chunks, padded


def rank_users(
    user_emb: Array,
    item_emb: Array,
    eval_indptr: np.ndarray,
    eval_items: np.ndarray,
    mask_indptr: np.ndarray,
    mask_items: np.ndarray,
    *,
    k: int = 50,
    chunk_size: int = 1024,
    precision: jax.lax.PrecisionLike = 'highest',
) -> TopK:
  """Ranks all items for every user that has ground truth.

  Args:
    user_emb: [U, D] user embeddings.
    item_emb: [I, D] item embeddings; scores are user_emb @ item_emb.T.
    eval_indptr: [U + 1] CSR row pointer of the ground-truth split.
    eval_items: [n_eval] its item ids (duplicates allowed).
    mask_indptr: [U + 1] CSR row pointer of the items to exclude (train).
    mask_items: [n_mask] their item ids.
    k: number of top items; clamped to I (columns past I are padded with
      item -1 and no hit).
    chunk_size: users per chunk (the last chunk is padded).
    precision: matmul precision of the scores; 'highest' (strict float32)
      by default to match the original's ranking.

  Returns:
    A `TopK` with host (numpy) arrays.
  """
  eval_indptr = np.asarray(eval_indptr, dtype=np.int64)
  mask_indptr = np.asarray(mask_indptr, dtype=np.int64)
  n_users, n_items = user_emb.shape[0], item_emb.shape[0]
  for name, ptr in (('eval_indptr', eval_indptr),
                    ('mask_indptr', mask_indptr)):
    if ptr.shape != (n_users + 1,):
      raise ValueError(f'{name} has shape {ptr.shape}, expected '
                       f'({n_users + 1},)')
  if chunk_size < 1 or k < 1:
    raise ValueError('chunk_size and k must be >= 1')

  n_gt_all = np.diff(eval_indptr)
  users = np.flatnonzero(n_gt_all > 0).astype(np.int32)
  n = users.size
  k_eff = min(k, n_items)
  if n == 0:
    return TopK(users, np.zeros((0, k), np.int32), np.zeros((0, k), bool),
                np.zeros(0, np.int64))
  chunk, n_chunks, users_padded = _padded_chunks(users, chunk_size)
  gt = chunk_csr(eval_indptr, eval_items, users, chunk, n_chunks)
  ms = chunk_csr(mask_indptr, mask_items, users, chunk, n_chunks)
  top, hits, _ = rank_chunks(
      user_emb, item_emb, users_padded, gt.items, gt.pos, gt.chunk_start,
      ms.items, ms.pos, ms.chunk_start, chunk_size=chunk, k=k_eff,
      gt_window=gt.window, mask_window=ms.window, precision=precision)
  top = np.asarray(top)[:n]
  hits = np.asarray(hits)[:n]
  if k_eff < k:
    top = np.pad(top, ((0, 0), (0, k - k_eff)), constant_values=-1)
    hits = np.pad(hits, ((0, 0), (0, k - k_eff)), constant_values=False)
  return TopK(users, top, hits, n_gt_all[users].astype(np.int64))


def top_k_items(
    user_emb: Array,
    item_emb: Array,
    users: np.ndarray,
    mask_indptr: np.ndarray,
    mask_items: np.ndarray,
    *,
    k: int,
    chunk_size: int = 1024,
    precision: jax.lax.PrecisionLike = 'highest',
) -> tuple[np.ndarray, np.ndarray]:
  """The ranking `rank_users` evaluates, for any users, with its scores.

  Args:
    user_emb, item_emb, mask_indptr, mask_items, chunk_size, precision: as
      for `rank_users`.
    users: [n] user ids (n >= 1; any order, repeats allowed).
    k: items per user, 1 <= k <= I.

  Returns:
    (items [n, k] int32, scores [n, k] float32), best first; where fewer
    than k items are left unmasked, -1 and -inf fill the rest.
  """
  n_items = item_emb.shape[0]
  users = np.asarray(users, np.int32)
  if not 1 <= k <= n_items or users.size == 0:
    raise ValueError(f'k={k} of {n_items} items for {users.size} users: '
                     'expected 1 <= k <= I and at least one user')
  chunk, n_chunks, users_padded = _padded_chunks(users, chunk_size)
  no_truth = chunk_csr(np.zeros(user_emb.shape[0] + 1, np.int64),
                       np.zeros(0, np.int32), users, chunk, n_chunks)
  ms = chunk_csr(mask_indptr, mask_items, users, chunk, n_chunks)
  top, _, scores = rank_chunks(
      user_emb, item_emb, users_padded, no_truth.items, no_truth.pos,
      no_truth.chunk_start, ms.items, ms.pos, ms.chunk_start,
      chunk_size=chunk, k=k, gt_window=no_truth.window,
      mask_window=ms.window, precision=precision)
  items = np.array(top[:users.size])
  scores = np.asarray(scores[:users.size])
  items[np.isneginf(scores)] = -1  # masked items ranked last: not items
  return items, scores
