"""Graph operators shared by the models, built on `sparse.spmm`.

* `knn_graph`: the frozen item-item kNN graph S = w S_v + (1 - w) S_t as a
  (S, Sᵀ) `Csr` pair built on the device from the stored neighbour lists;
  `item_graph` applies it (MENTOR, FREEDOM; LATTICE-style readings too).
  `knn_propagate` (gathers) and `knn_matrix_numpy` (scipy) are the plain
  references the tests compare against.
* `layer_mean_propagate`: LightGCN's readout over the user-item graph.
* `interaction_matrix`: the U x I training interactions R and Rᵀ (LGMRec);
  `distinct_row_counts`: MMRec's (A > 0) degrees.
* `knn_from_embeddings_blockwise`: top-k cosine neighbours of learned
  embeddings in [block, n] tiles, never n x n (LATTICE's learned graph);
  `neighbour_csr`: (A, Aᵀ) from a fixed-width [n, m] neighbour layout.

Pure `jax.numpy`; no Flax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from mentor_jax.ops import sparse
from mentor_jax.ops.sparse import Csr

# How `item_graph` combines its layers: 'power' S^L x (the code), 'sum'
# sum_l S^l x.
MM_AGGREGATIONS = ('power', 'sum')


def knn_propagate(
    x: jax.Array,
    knn_v: jax.Array,
    knn_t: jax.Array,
    *,
    k: int,
    image_weight: float = 0.1,
    n_layers: int = 1,
) -> jax.Array:
  """S^L x for the frozen item-item graph S, by gathers.

  (S x)_i = w * mean_{j in knn_v[i, :k]} x_j
            + (1 - w) * mean_{j in knn_t[i, :k]} x_j.

  This equals the official code's sparse S = w S_v + (1 - w) S_t
  (MENTOR_SPEC §1.6): every stored value of S_m is r_i^-1/2 r_j^-1/2 with
  r = k + 1e-7, which is 1/k in float32, and neighbours present in both lists
  add up, as in the sparse sum. With L > 1 this is S^L x, not a sum over
  layers, again as in the code. `knn_matrix_numpy` builds S explicitly.

  Args:
    x: [n_items, d] item embeddings.
    knn_v: int [n_items, K] visual neighbour lists, best first, K >= k.
    knn_t: int [n_items, K] textual neighbour lists.
    k: neighbours used per row (static: a prefix of the stored K columns).
    image_weight: w, the weight of the visual graph.
    n_layers: L, the number of applications of S (static).

  Returns:
    [n_items, d].
  """
  if not 0 < k <= min(knn_v.shape[1], knn_t.shape[1]):
    raise ValueError(f'k={k} must lie in [1, {knn_v.shape[1]}].')
  for _ in range(n_layers):  # L is tiny (1 in the code) and static.
    # k row gathers of [n_items, d] summed, rather than one [n_items, k, d]
    # gather and a mean: XLA on CPU does not fuse the latter, which measured
    # 5x slower forward at Clothing size (23k items, k=10, d=128).
    sum_v = sum(x[knn_v[:, c]] for c in range(k))
    sum_t = sum(x[knn_t[:, c]] for c in range(k))
    x = (image_weight / k) * sum_v + ((1.0 - image_weight) / k) * sum_t
  return x


def knn_graph(
    knn_v: jax.Array,
    knn_t: jax.Array,
    *,
    k: int,
    image_weight: float = 0.1,
) -> tuple[Csr, Csr]:
  """S and Sᵀ as `Csr`s built on the device, for `spmm(s, x, a_t=s_t)`.

  The same operator as `knn_propagate`, traceable (it runs inside the
  compiled step; the neighbour lists are constants, so XLA hoists it out of
  the epoch's loop). Every row of S holds its 2k list entries, columns
  ascending; a neighbour present in both lists is two entries that the
  kernels add up, as the official sparse sum does.

  Why not gathers: the backward pass of k row gathers is k scatter-adds,
  each a full [n_items, d] buffer. Through `spmm` it is one product with Sᵀ.
  Measured on the Baby shape (7,050 items, d = 7 x 64, 2-core CPU): the
  epoch program's XLA temp memory drops by about 0.2 GiB; fwd+bwd at 23k
  items, d = 128: ~17 ms vs ~115 ms with the 'csr' kernel.

  Args:
    knn_v: [n_items, K] visual neighbour lists (host or device).
    knn_t: [n_items, K] textual neighbour lists.
    k: neighbours used per row (static, a prefix of the K columns).
    image_weight: w.

  Returns:
    (S, Sᵀ), both [n_items, n_items], nnz = 2 k n_items.
  """
  knn_v, knn_t = jnp.asarray(knn_v), jnp.asarray(knn_t)
  n = knn_v.shape[0]
  if not 0 < k <= min(knn_v.shape[1], knn_t.shape[1]):
    raise ValueError(f'k={k} must lie in [1, {knn_v.shape[1]}].')
  cols = jnp.concatenate([knn_v[:, :k], knn_t[:, :k]], axis=1)
  vals = jnp.broadcast_to(jnp.concatenate([
      jnp.full((k,), image_weight / k, jnp.float32),
      jnp.full((k,), (1.0 - image_weight) / k, jnp.float32)]), cols.shape)
  order = jnp.argsort(cols, axis=1, stable=True)
  cols = jnp.take_along_axis(cols, order, axis=1).ravel().astype(jnp.int32)
  vals = jnp.take_along_axis(vals, order, axis=1).ravel()
  rows = jnp.repeat(jnp.arange(n, dtype=jnp.int32), 2 * k,
                    total_repeat_length=2 * k * n)
  indptr = jnp.arange(n + 1, dtype=jnp.int32) * (2 * k)
  s = Csr(indptr=indptr, indices=cols, values=vals, rows=rows, n_cols=n)
  # Sᵀ: a stable sort by column keeps rows ascending within each new row.
  perm = jnp.argsort(cols, stable=True)
  t_indptr = jnp.concatenate([
      jnp.zeros((1,), jnp.int32),
      jnp.cumsum(jnp.bincount(cols, length=n)).astype(jnp.int32)])
  s_t = Csr(indptr=t_indptr, indices=rows[perm], values=vals[perm],
            rows=cols[perm], n_cols=n)
  return s, s_t


def knn_matrix_numpy(
    knn_v: np.ndarray,
    knn_t: np.ndarray,
    k: int,
    image_weight: float,
    n_items: int,
) -> sp.csr_matrix:
  """The explicit S = w S_v + (1 - w) S_t that `knn_propagate` applies.

  Args:
    knn_v: [n_items, K] visual neighbour lists.
    knn_t: [n_items, K] textual neighbour lists.
    k: neighbours used per row.
    image_weight: w.
    n_items: the number of items (rows and columns).

  Returns:
    scipy CSR [n_items, n_items], rows summing to 1, entries present in both
    lists summed.
  """
  knn_v = np.asarray(knn_v)[:, :k]
  knn_t = np.asarray(knn_t)[:, :k]
  rows = np.repeat(np.arange(n_items), k)
  s_v = sp.csr_matrix(
      (np.full(n_items * k, 1.0 / k), (rows, knn_v.ravel())),
      shape=(n_items, n_items))
  s_t = sp.csr_matrix(
      (np.full(n_items * k, 1.0 / k), (rows, knn_t.ravel())),
      shape=(n_items, n_items))
  s = image_weight * s_v + (1.0 - image_weight) * s_t
  s.sum_duplicates()
  return s.astype(np.float32).tocsr()


def item_graph(x: jax.Array, knn_v: jax.Array, knn_t: jax.Array, *,
               image_weight: float, n_layers: int,
               aggregation: str = 'power', kernel: str = 'csr') -> jax.Array:
  """What the item-item graph adds to the UI output x (Eq. 5-6).

  'power' (the code, and the paper's text, which adds the last layer's
  A^(L)): S^L x. 'sum': sum_{l=1..L} S^l x, the LATTICE-style reading.
  Equal for L = 1. S is applied with `sparse.spmm` (`kernel`), built from
  the neighbour lists by `knn_graph`.
  """
  if aggregation not in MM_AGGREGATIONS:
    raise ValueError(f'mm_aggregation must be one of {MM_AGGREGATIONS}, '
                     f'got {aggregation!r}')
  s, s_t = knn_graph(knn_v, knn_t, k=knn_v.shape[1],
                            image_weight=image_weight)
  total, h = jnp.zeros_like(x), x
  for _ in range(n_layers):
    h = sparse.spmm(s, h, kernel=kernel, a_t=s_t)
    total = total + h
  return h if aggregation == 'power' else total


def layer_mean_propagate(adj: Csr, ego: jax.Array, n_layers: int,
                         kernel: str) -> jax.Array:
  """LightGCN's readout: mean of [E, ÂE, ..., Â^L E] (layer 0 included).

  Args:
    adj: the normalized user-item graph Â over N = U + I nodes (symmetric,
      so the 'csr' kernel's backward can use Â itself).
    ego: [N, d] layer-0 embeddings (users first, then items).
    n_layers: L (static).
    kernel: `sparse.spmm` kernel.

  Returns:
    [N, d].
  """
  total = ego
  x = ego
  for _ in range(n_layers):
    x = sparse.spmm(adj, x, kernel=kernel)
    total = total + x
  return total / (n_layers + 1)


def interaction_matrix(train_indptr: jax.Array, train_items: jax.Array,
                       n_items: int) -> tuple[Csr, Csr]:
  """R and Rᵀ: the U x I training interactions, one entry per training row.

  Built on the device from the per-user CSR the data layer keeps (traceable,
  a constant of the compiled epoch). Duplicate rows stay separate entries
  and so add up, as MMRec's `inter_matrix` COO does in `torch.sparse.mm`.

  Args:
    train_indptr: int [U + 1] per-user row pointers.
    train_items: int [n_train] items of each user, ascending within a user.
    n_items: I.

  Returns:
    (R [U, I], Rᵀ [I, U]) with values 1, for `spmm(r, x, a_t=r_t)`.
  """
  train_indptr = jnp.asarray(train_indptr, jnp.int32)
  cols = jnp.asarray(train_items, jnp.int32)
  n_users, nnz = train_indptr.shape[0] - 1, cols.shape[0]
  rows = jnp.repeat(jnp.arange(n_users, dtype=jnp.int32),
                    jnp.diff(train_indptr), total_repeat_length=nnz)
  ones = jnp.ones((nnz,), jnp.float32)
  r = Csr(indptr=train_indptr, indices=cols, values=ones, rows=rows,
          n_cols=n_items)
  perm = jnp.argsort(cols, stable=True)
  t_indptr = jnp.concatenate([
      jnp.zeros((1,), jnp.int32),
      jnp.cumsum(jnp.bincount(cols, length=n_items)).astype(jnp.int32)])
  r_t = Csr(indptr=t_indptr, indices=rows[perm], values=ones,
            rows=cols[perm], n_cols=n_users)
  return r, r_t


def distinct_row_counts(indptr: jax.Array, sorted_cols: jax.Array
                        ) -> jax.Array:
  """Distinct column ids per CSR row whose columns are sorted within rows.

  MMRec's degrees count (A > 0), i.e. duplicates once.

  Returns:
    float32 [n_rows].
  """
  indptr = jnp.asarray(indptr, jnp.int32)
  cols = jnp.asarray(sorted_cols)
  n_rows, nnz = indptr.shape[0] - 1, cols.shape[0]
  rows = jnp.repeat(jnp.arange(n_rows, dtype=jnp.int32), jnp.diff(indptr),
                    total_repeat_length=nnz)
  starts = jnp.arange(nnz) == indptr[rows]
  new = starts | (cols != jnp.roll(cols, 1))
  return jax.ops.segment_sum(new.astype(jnp.float32), rows,
                             num_segments=n_rows)


def neighbour_csr(cols: jax.Array, vals: jax.Array) -> tuple[Csr, Csr]:
  """(A, Aᵀ) as `Csr`s from a fixed-width neighbour layout, on the device.

  Row i of A holds vals[i, c] at column cols[i, c] for every c; repeated
  columns stay separate entries and add up. Columns are sorted within each
  row (the 'csr' kernel is told they are). Traceable: the learned item
  graph of LATTICE is rebuilt inside the compiled program.

  Args:
    cols: int [n, m] column ids in [0, n).
    vals: float [n, m] values.

  Returns:
    (A, Aᵀ), both [n, n] with nnz = n m, for `spmm(a, x, a_t=a_t)`.
  """
  n, m = cols.shape
  order = jnp.argsort(cols, axis=1, stable=True)
  cols = jnp.take_along_axis(cols, order, axis=1).ravel().astype(jnp.int32)
  vals = jnp.take_along_axis(vals, order, axis=1).ravel()
  rows = jnp.repeat(jnp.arange(n, dtype=jnp.int32), m,
                    total_repeat_length=n * m)
  a = Csr(indptr=jnp.arange(n + 1, dtype=jnp.int32) * m, indices=cols,
          values=vals, rows=rows, n_cols=n)
  # Aᵀ: a stable sort by column keeps rows ascending within each new row.
  perm = jnp.argsort(cols, stable=True)
  t_indptr = jnp.concatenate([
      jnp.zeros((1,), jnp.int32),
      jnp.cumsum(jnp.bincount(cols, length=n)).astype(jnp.int32)])
  a_t = Csr(indptr=t_indptr, indices=rows[perm], values=vals[perm],
            rows=cols[perm], n_cols=n)
  return a, a_t


def knn_from_embeddings_blockwise(x: jax.Array, k: int, *,
                                  block_size: int = 1024
                                  ) -> tuple[jax.Array, jax.Array]:
  """Top-k cosine neighbours of every row of x, without an n x n matrix.

  MMRec's `build_knn_neighbourhood(build_sim(x), k)` keeps, per row, the k
  largest entries of the dense cosine-similarity matrix (self included,
  values kept). Here rows go in blocks: a [block, n] similarity tile, its
  top-k by `lax.top_k`, so the peak is one tile. The selection runs on
  stop-gradient copies; the kept values are then recomputed as row dot
  products, which carries exactly the gradient of the dense form (top-k
  passes gradient to the kept entries only, and through them to x).

  Args:
    x: [n, d] embeddings (rows with zero norm give zero similarities).
    k: neighbours per row (static), 1 <= k <= n.
    block_size: rows per tile (static); the tile is block_size x n floats.

  Returns:
    (cols int32 [n, k], best first; vals float [n, k], the cosine
    similarities cos(x_i, x_cols[i, c]), differentiable in x).
  """
  n, d = x.shape
  if not 1 <= k <= n:
    raise ValueError(f'k={k} must lie in [1, {n}] (the number of rows).')
  block = max(1, min(block_size, n))
  unit = x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True),
                                       1e-24))
  fixed = jax.lax.stop_gradient(unit)
  n_blocks = -(-n // block)
  padded = jnp.pad(fixed, ((0, n_blocks * block - n), (0, 0)))
  hi = jax.lax.Precision.HIGHEST  # The selection must not depend on TF32.

  def top_cols(rows):
    sim = jnp.matmul(rows, fixed.T, precision=hi)  # [block, n]
    return jax.lax.top_k(sim, k)[1].astype(jnp.int32)

  cols = jax.lax.map(top_cols, padded.reshape(n_blocks, block, d))
  cols = cols.reshape(n_blocks * block, k)[:n]
  # One column at a time: a [n, k, d] gather would be k times the table.
  vals = jnp.stack([jnp.sum(unit * unit[cols[:, c]], axis=-1)
                    for c in range(k)], axis=1)
  return cols, vals
