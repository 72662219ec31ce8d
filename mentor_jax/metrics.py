"""Full-ranking top-K evaluation (Recall, NDCG, Precision, MAP, Hit, MRR).

Follows MMRec's `TopKEvaluator` as used by MENTOR (spec §5):
  * every item is ranked; the user's training items are excluded (their
    scores become -inf; the original uses -1e10, which orders identically);
  * Recall@K = hits@K / |G_u| (denominator |G_u|, not min(|G_u|, K));
  * NDCG@K = DCG / IDCG, DCG = sum_r h_r / log2(r + 1),
    IDCG = sum_{r <= min(|G_u|, K)} 1 / log2(r + 1);
  * Precision@K = hits@K / K;
  * MAP@K = sum_{r <= K} h_r * Precision@r / min(|G_u|, K) (MMRec's `map_`);
  * Hit@K = 1 if hits@K > 0 else 0; MRR@K = 1 / (rank of the first hit) if
    it is within K, else 0 (RecBole's `hit` and `mrr`);
  * the mean is over users with at least one ground-truth row.
|G_u| counts the user's rows in the split, duplicates included; a top-K item
is a hit if it occurs at least once in the user's ground truth.

Ties: `jax.lax.top_k` puts the lower item index first among equal scores.
PyTorch's `topk` leaves tie order unspecified, so results can differ from the
original only when scores tie exactly.

The device work (scores, masking, top-K, hit lookup) runs in ONE jitted
function that maps over fixed-size chunks of users; the per-user metrics are
then computed on the host in float64 from the [n_users, K] hit matrix.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from data_prep import convert

Array = jax.Array

# Every metric, in the order results list them (per cut-off K).
METRICS = ('recall', 'ndcg', 'precision', 'map', 'hit', 'mrr')


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


class _ChunkedCsr(NamedTuple):
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


def _chunk_csr(indptr: np.ndarray, items: np.ndarray, users: np.ndarray,
               chunk_size: int, n_chunks: int) -> _ChunkedCsr:
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
  return _ChunkedCsr(sub_items, pos, chunk_ptr[:-1].astype(np.int32), window)


@functools.partial(
    jax.jit, static_argnames=('chunk_size', 'k', 'gt_window', 'mask_window',
                              'precision'))
def _rank_chunks(user_emb, item_emb, users, gt_items, gt_pos, gt_start,
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
  gt = _chunk_csr(eval_indptr, eval_items, users, chunk, n_chunks)
  ms = _chunk_csr(mask_indptr, mask_items, users, chunk, n_chunks)
  top, hits, _ = _rank_chunks(
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
  no_truth = _chunk_csr(np.zeros(user_emb.shape[0] + 1, np.int64),
                        np.zeros(0, np.int32), users, chunk, n_chunks)
  ms = _chunk_csr(mask_indptr, mask_items, users, chunk, n_chunks)
  top, _, scores = _rank_chunks(
      user_emb, item_emb, users_padded, no_truth.items, no_truth.pos,
      no_truth.chunk_start, ms.items, ms.pos, ms.chunk_start,
      chunk_size=chunk, k=k, gt_window=no_truth.window,
      mask_window=ms.window, precision=precision)
  items = np.array(top[:users.size])
  scores = np.asarray(scores[:users.size])
  items[np.isneginf(scores)] = -1  # masked items ranked last: not items
  return items, scores


def topk_metrics(hits: np.ndarray, n_gt: np.ndarray,
                 ks: Sequence[int] = (5, 10, 20, 50)) -> dict[str, np.ndarray]:
  """Per-user metrics (`METRICS`) at each K from a hit matrix.

  Args:
    hits: [n, k_max] bool, hit flags of the ranked items, best first;
      k_max >= max(ks).
    n_gt: [n] number of ground-truth rows per user (> 0).
    ks: cut-offs.

  Returns:
    {'<metric>@K': float64 [n]} for each metric and K.
  """
  hits = np.asarray(hits, dtype=np.float64)
  n_gt = np.asarray(n_gt, dtype=np.int64)
  k_max = max(ks)
  if hits.shape[1] < k_max:
    raise ValueError(f'hits has {hits.shape[1]} columns, need {k_max}')
  hits = hits[:, :k_max]
  ranks = np.arange(1, k_max + 1, dtype=np.float64)
  discount = 1.0 / np.log2(ranks + 1)
  dcg = np.cumsum(hits * discount, axis=1)
  ideal = np.cumsum(discount)
  n_hits = np.cumsum(hits, axis=1)
  # Precision at each hit's rank, summed up to K (MAP's numerator).
  precision_at_hits = np.cumsum(hits * n_hits / ranks, axis=1)
  first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, k_max + 1)
  out = {}
  for k in ks:
    out[f'recall@{k}'] = n_hits[:, k - 1] / n_gt
    idcg = ideal[np.minimum(n_gt, k) - 1]
    out[f'ndcg@{k}'] = dcg[:, k - 1] / idcg
    out[f'precision@{k}'] = n_hits[:, k - 1] / k
    out[f'map@{k}'] = precision_at_hits[:, k - 1] / np.minimum(n_gt, k)
    out[f'hit@{k}'] = (n_hits[:, k - 1] > 0).astype(np.float64)
    out[f'mrr@{k}'] = np.where(first <= k, 1.0 / first, 0.0)
  return out


def evaluate_embeddings(
    user_emb: Array,
    item_emb: Array,
    eval_indptr: np.ndarray,
    eval_items: np.ndarray,
    mask_indptr: np.ndarray,
    mask_items: np.ndarray,
    *,
    ks: Sequence[int] = (5, 10, 20, 50),
    chunk_size: int = 1024,
    precision: jax.lax.PrecisionLike = 'highest',
) -> dict[str, float]:
  """Full-ranking metrics averaged over users with ground truth (spec §5).

  Args:
    user_emb: [U, D] user embeddings.
    item_emb: [I, D] item embeddings.
    eval_indptr: [U + 1] int CSR row pointer of the ground-truth split.
    eval_items: [n] item ids of that split (duplicates count in |G_u|).
    mask_indptr: [U + 1] CSR row pointer of the training items to exclude.
    mask_items: item ids to exclude.
    ks: cut-offs.
    chunk_size: users scored per chunk.
    precision: matmul precision of the scores.

  Returns:
    {'<metric>@K': float} for each of `METRICS` and K, unrounded (NaN if
    no user has ground truth).
  """
  per_user = per_user_metrics(user_emb, item_emb, eval_indptr, eval_items,
                              mask_indptr, mask_items, ks=ks,
                              chunk_size=chunk_size, precision=precision)
  users = per_user.pop('users')
  if users.size == 0:
    return {key: float('nan') for key in per_user}
  return {key: float(np.mean(v)) for key, v in per_user.items()}


def per_user_metrics(
    user_emb: Array,
    item_emb: Array,
    eval_indptr: np.ndarray,
    eval_items: np.ndarray,
    mask_indptr: np.ndarray,
    mask_items: np.ndarray,
    *,
    ks: Sequence[int] = (5, 10, 20, 50),
    chunk_size: int = 1024,
    precision: jax.lax.PrecisionLike = 'highest',
) -> dict[str, np.ndarray]:
  """`evaluate_embeddings` before the mean over users (for paired tests).

  Returns:
    {'users': int64 [n] (ascending, those with ground truth), and
    '<metric>@K': float64 [n] for each of `METRICS` and K}.
  """
  ranked = rank_users(user_emb, item_emb, eval_indptr, eval_items,
                      mask_indptr, mask_items, k=max(ks),
                      chunk_size=chunk_size, precision=precision)
  out = {'users': np.asarray(ranked.users, np.int64)}
  out.update(topk_metrics(ranked.hits, ranked.n_gt, ks))
  return out


def _pairs(indptr: np.ndarray, items: np.ndarray) -> tuple[np.ndarray,
                                                            np.ndarray]:
  """(user, item) rows of a per-user CSR."""
  indptr = np.asarray(indptr, dtype=np.int64)
  users = np.repeat(np.arange(indptr.size - 1, dtype=np.int64),
                    np.diff(indptr))
  return users, np.asarray(items, dtype=np.int64)


def evaluate_splits(
    user_emb: Array,
    item_emb: Array,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    mask_indptr: np.ndarray,
    mask_items: np.ndarray,
    *,
    ks: Sequence[int] = (5, 10, 20, 50),
    chunk_size: int = 1024,
    precision: jax.lax.PrecisionLike = 'highest',
) -> dict[str, dict[str, float]]:
  """`evaluate_embeddings` for several splits with one ranking pass.

  The ranking of a user depends only on the embeddings and the excluded
  (training) items, not on the split, so valid and test share one top-K
  list per user: it is computed once for every user with ground truth in
  any split, and each split's hits are looked up on the host. The results
  equal separate `evaluate_embeddings` calls exactly.

  Args:
    user_emb, item_emb: as in `evaluate_embeddings`.
    splits: {name: (indptr [U + 1], items)} ground-truth CSRs.
    mask_indptr, mask_items: CSR of the items to exclude (train).
    ks, chunk_size, precision: as in `evaluate_embeddings`.

  Returns:
    {name: {'<metric>@K': float}}.
  """
  n_users, n_items = user_emb.shape[0], item_emb.shape[0]
  pairs = {name: _pairs(*csr) for name, csr in splits.items()}
  # The union of the splits as one CSR: it selects the users to rank.
  union_ptr, union_items = convert.split_csr(
      np.concatenate([u for u, _ in pairs.values()]),
      np.concatenate([i for _, i in pairs.values()]), n_users)
  ranked = rank_users(user_emb, item_emb, union_ptr, union_items,
                      mask_indptr, mask_items, k=max(ks),
                      chunk_size=chunk_size, precision=precision)
  out = {}
  for name, (users, items) in pairs.items():
    n_gt = np.bincount(users, minlength=n_users)
    rows = np.flatnonzero(n_gt[ranked.users] > 0)
    if rows.size == 0:
      out[name] = {key: float('nan') for key in topk_metrics(
          np.zeros((1, max(ks)), bool), np.ones(1), ks)}
      continue
    # Membership of each top item in the user's split, by sorted keys.
    truth = np.unique(users * n_items + items)
    top = ranked.top_items[rows].astype(np.int64)
    keys = ranked.users[rows, None].astype(np.int64) * n_items + top
    hits = np.isin(keys, truth) & (top >= 0)
    per_user = topk_metrics(hits, n_gt[ranked.users[rows]], ks)
    out[name] = {key: float(np.mean(v)) for key, v in per_user.items()}
  return out


class Evaluator:
  """Full-ranking metrics of a dataset's valid and test splits.

  Args:
    dataset: a `data.Dataset` (its split CSRs stay on the host).
    ks: the cut-offs (config.topk).
    chunk_size: users ranked at a time (config.eval_batch_size).
  """

  def __init__(self, dataset, ks: Sequence[int], chunk_size: int):
    self._train = dataset.split('train')
    self._splits = {s: dataset.split(s) for s in ('valid', 'test')}
    self._ks = tuple(ks)
    self._chunk = int(chunk_size)

  @classmethod
  def for_config(cls, dataset, config) -> 'Evaluator':
    return cls(dataset, config.topk, config.eval_batch_size)

  def __call__(self, user_emb, item_emb) -> dict[str, dict[str, float]]:
    # One ranking pass serves both splits (they share the training mask).
    return evaluate_splits(user_emb, item_emb, self._splits, *self._train,
                           ks=self._ks, chunk_size=self._chunk)

  def per_user(self, user_emb, item_emb, split: str
               ) -> dict[str, np.ndarray]:
    """Per-user metrics of `split` (`per_user_metrics`)."""
    return per_user_metrics(user_emb, item_emb, *self._splits[split],
                            *self._train, ks=self._ks,
                            chunk_size=self._chunk)


def popularity_scores(train_items: np.ndarray, n_items: int) -> np.ndarray:
  """Training-interaction count per item (duplicates counted), float32 [I].

  Used as a popularity baseline: the same scores for every user, e.g. with
  `user_emb = ones([U, 1])` and `item_emb = popularity_scores(...)[:, None]`.
  """
  return np.bincount(np.asarray(train_items),
                     minlength=n_items).astype(np.float32)
