"""Fixed graphs: the normalized user-item CSR and item-item kNN lists.

Both are computed once on the host with numpy and stored in the .npz; the
model only gathers from them.
"""

from __future__ import annotations

import numpy as np

# Bytes of temporaries per similarity entry in `knn_cosine`: the float32
# block, its partition copy, the mask, and in the worst case (every entry tied
# with the K-th) two int64 index arrays, the gathered values and a lexsort.
_KNN_BYTES_PER_ENTRY = 4 + 4 + 1 + 8 + 8 + 4 + 8


def normalized_adjacency(
    train_user: np.ndarray, train_item: np.ndarray, n_users: int,
    n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Builds Â = D^-1/2 A D^-1/2 of the bipartite training graph as CSR.

  Nodes are users 0..U-1 then items U..U+I-1. Every training row gives the
  edges (u, U+i) and (U+i, u); repeated rows stay repeated entries
  (multi-edges), as in MENTOR's PyG `edge_index`, and count in the degree.

  Args:
    train_user: int [n_train] user ids.
    train_item: int [n_train] item ids.
    n_users: U.
    n_items: I.

  Returns:
    (indptr int32 [N+1], indices int32 [nnz], values float32 [nnz]) with
    nnz = 2 n_train, columns ascending within a row, value
    1/sqrt(d_row d_col); rows of zero-degree nodes are empty.
  """
  n_nodes = n_users + n_items
  u = np.asarray(train_user, np.int64)
  i = np.asarray(train_item, np.int64) + n_users
  rows = np.concatenate([u, i])
  cols = np.concatenate([i, u])
  order = np.lexsort((cols, rows))  # Stable: row, then column.
  rows, cols = rows[order], cols[order]
  deg = np.bincount(rows, minlength=n_nodes)
  # Every endpoint of an edge has degree >= 1, so no division by zero.
  inv_sqrt = np.zeros(n_nodes, np.float64)
  inv_sqrt[deg > 0] = 1.0 / np.sqrt(deg[deg > 0])
  values = (inv_sqrt[rows] * inv_sqrt[cols]).astype(np.float32)
  indptr = np.concatenate([[0], np.cumsum(deg)])
  return (indptr.astype(np.int32), cols.astype(np.int32), values)


# A float32 norm is exact enough between these bounds; outside them the
# squares overflow to inf (values near the float32 maximum) or underflow.
_SAFE_NORM = (1e-15, 1e15)


def _normalize_rows(feat: np.ndarray) -> np.ndarray:
  """Returns float32 rows divided by their L2 norm; zero rows stay zero.

  The norm is computed in float32, as the official code does, except for
  rows where float32 squares would overflow or underflow: those are
  recomputed in float64, where the norm of any finite float32 row is finite
  (and non-zero unless the row is zero).
  """
  feat = np.asarray(feat, np.float32)
  with np.errstate(over='ignore', under='ignore'):
    norm = np.linalg.norm(feat, axis=1, keepdims=True)
  # The official code divides without epsilon (its features have no zero
  # rows); a zero row here gets similarity 0 to everything instead of NaN.
  out = np.divide(feat, norm, out=np.zeros_like(feat),
                  where=np.isfinite(norm) & (norm > 0))
  unsafe = ~((norm >= _SAFE_NORM[0]) & (norm <= _SAFE_NORM[1]))[:, 0]
  if unsafe.any():
    rows = feat[unsafe].astype(np.float64)
    norm64 = np.linalg.norm(rows, axis=1, keepdims=True)
    out[unsafe] = np.divide(rows, norm64, out=np.zeros_like(rows),
                            where=norm64 > 0)
  return out


def _topk_block(sim: np.ndarray, k: int) -> np.ndarray:
  """Top-k columns per row of `sim`, best first, ties by lower column."""
  n_rows, n_cols = sim.shape
  # The k-th largest value per row; every entry >= it is a candidate, so all
  # ties at the boundary are kept and the tie-break below sees them all
  # (argpartition alone would keep an arbitrary subset of them).
  kth = np.partition(sim, n_cols - k, axis=1)[:, n_cols - k]
  r, c = np.nonzero(sim >= kth[:, None])  # Row-major: c ascends per row.
  order = np.lexsort((c, -sim[r, c], r))
  r, c = r[order], c[order]
  start = np.searchsorted(r, np.arange(n_rows))
  rank = np.arange(r.size) - start[r]
  keep = rank < k
  return c[keep].reshape(n_rows, k)


def knn_cosine(feat: np.ndarray, k: int, *,
               memory_budget: int = 512 << 20) -> np.ndarray:
  """Item-item kNN lists from raw cosine similarity, computed in row blocks.

  Matches MENTOR's `get_knn_adj_mat` (normalize rows, full similarity,
  topk) but never holds the I x I matrix: rows are processed in blocks whose
  temporaries fit `memory_budget`.

  Args:
    feat: [I, d] raw features.
    k: neighbours per item, 1 <= k <= I. The item itself is normally first.
    memory_budget: bytes for the per-block temporaries.

  Returns:
    int32 [I, k]: column j of row i is i's (j+1)-th most similar item; equal
    similarities are ordered by lower item id.
  """
  n_items = feat.shape[0]
  if not 1 <= k <= n_items:
    raise ValueError(f'knn k must be in [1, {n_items}], got {k}')
  normed = _normalize_rows(feat)
  block = max(1, min(n_items,
                     memory_budget // (_KNN_BYTES_PER_ENTRY * n_items)))
  out = np.empty((n_items, k), np.int32)
  for s in range(0, n_items, block):
    sim = normed[s:s + block] @ normed.T  # [block, I] float32
    out[s:s + block] = _topk_block(sim, k)
  return out
