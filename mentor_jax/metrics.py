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

The ranking (scores, masking, top-K with its tie order, hit lookup) is
ranking.py's, on the device; the per-user metrics are computed here on the
host in float64 from the [n_users, K] hit matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from data_prep import convert
from mentor_jax import ranking

Array = jax.Array

# Every metric, in the order results list them (per cut-off K).
METRICS = ('recall', 'ndcg', 'precision', 'map', 'hit', 'mrr')


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
  ranked = ranking.rank_users(user_emb, item_emb, eval_indptr, eval_items,
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
  ranked = ranking.rank_users(user_emb, item_emb, union_ptr, union_items,
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
