"""DiffMM's graphs: D^-1/2 (A + I) D^-1/2 over users and items, and the
edge dropout of `SpAdjDropEdge`, with static shapes.

The official code builds both the base graph (DataHandler.makeTorchAdj) and
each rebuilt modality graph (Main.buildUIMatrix) as the binarized
bipartite adjacency plus the identity, symmetrically normalized. Here the
entries are (user, item), (item, user) and the N self-loops, sorted by
(row, column); a repeated interaction keeps its slot with value 0, so nnz
is fixed by the inputs' lengths and the program never changes shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mentor_jax.ops.sparse import Csr


def normalized_with_self_loops(users: jax.Array, items: jax.Array,
                               n_users: int, n_items: int) -> Csr:
  """Â = D^-1/2 ((A != 0) + I) D^-1/2 as a Csr (symmetric, N = U + I).

  Args:
    users, items: [E] int interactions (repeats allowed: counted once).
    n_users, n_items: U, I.

  Returns:
    Â with nnz = 2 E + N, columns ascending within rows.
  """
  n = n_users + n_items
  users = users.astype(jnp.int32)
  items = items.astype(jnp.int32) + n_users
  loops = jnp.arange(n, dtype=jnp.int32)
  rows = jnp.concatenate([users, items, loops])
  cols = jnp.concatenate([items, users, loops])
  order = jnp.lexsort((cols, rows))
  rows, cols = rows[order], cols[order]
  first = jnp.arange(rows.shape[0]) == 0
  repeat = ~first & (rows == jnp.roll(rows, 1)) & (cols == jnp.roll(cols, 1))
  present = (~repeat).astype(jnp.float32)
  degree = jax.ops.segment_sum(present, rows, num_segments=n,
                               indices_are_sorted=True)
  inv_sqrt = jax.lax.rsqrt(degree)  # >= 1: every node has its self-loop.
  values = present * inv_sqrt[rows] * inv_sqrt[cols]
  indptr = jnp.concatenate([
      jnp.zeros((1,), jnp.int32),
      jnp.cumsum(jnp.bincount(rows, length=n)).astype(jnp.int32)])
  return Csr(indptr=indptr, indices=cols, values=values, rows=rows, n_cols=n)


def transpose_symmetric_pattern(a: Csr) -> Csr:
  """Aᵀ of a Csr whose pattern is symmetric (values need not be): the same
  indptr; entries re-sorted by (column, row)."""
  order = jnp.lexsort((a.rows, a.indices))
  return Csr(indptr=a.indptr, indices=a.rows[order],
             values=a.values[order], rows=a.indices[order], n_cols=a.n_cols)


def drop_edges(a: Csr, key: jax.Array, keep_rate: float) -> Csr:
  """`SpAdjDropEdge`: each stored entry (self-loops too) kept with
  probability keep_rate and divided by it; a dropped entry is a 0 value
  (the same products as removing it). keep_rate 1 keeps all, unscaled."""
  if isinstance(keep_rate, (int, float)) and keep_rate >= 1.0:
    return a
  keep = jax.random.bernoulli(key, keep_rate, a.values.shape)
  return a.with_values(jnp.where(keep, a.values / keep_rate, 0.0))
