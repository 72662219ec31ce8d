"""Per-epoch edge pruning of the user-item graph, as value masks.

MMRec's FREEDOM and LayerGCN train each epoch on a random subgraph of the
training interactions: keep some of the (user, item) edges, re-normalize
with the degrees the kept edges give, mirror to both directions. Here the
graph keeps its static edge list (the stored Â) and a pruned graph is the
same `Csr` with new values, 0 on dropped edges, so shapes and the compiled
program never change.

* `sample_edges`: a 0/1 mask of exactly n_keep edges drawn without
  replacement with probability ~ exp(log_weights): Gumbel top-k, the
  distribution of `torch.multinomial(w, n_keep)` (weights 1/sqrt(d_u d_i):
  degree-sensitive) and of `random.sample` (equal weights: uniform).
* `renormalize`: Â on the kept edges, 1/sqrt((d'_u + 1e-7)(d'_i + 1e-7))
  with the kept degrees d', as MMRec's `_normalize_adj_m`.
* `prune_adj`: FREEDOM's degree-sensitive pruning of the stored Â.
* `distinct_edges`: the first entry of each repeated (user, item) pair
  (MMRec's LayerGCN edge list holds distinct pairs).
* `has_bipartite_layout`: the stored layout all of this relies on.

The layout (data_prep's `normalized_adjacency`): user rows first, so the
first nnz/2 entries are the (user, item) edges ordered by (user, item), the
rest the same edges transposed, ordered by (item, user); a repeated
training row is a repeated entry. Pure `jax.numpy`; no Flax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mentor_jax.ops.sparse import Csr

# MMRec adds this to every degree before the inverse square root.
DEGREE_EPS = 1e-7


def sample_edges(log_weights: jax.Array, n_keep: int,
                 key: jax.Array) -> jax.Array:
  """A mask of n_keep entries drawn without replacement ~ exp(log_weights).

  The n_keep largest log w + Gumbel noise are a draw of n_keep entries
  without replacement, each next one with probability proportional to its
  weight among those left (Plackett-Luce): `torch.multinomial(w, n_keep)`.
  Equal weights give a uniform n_keep-subset (`random.sample`). Entries
  with weight 0 (log -inf) are never drawn while n_keep positive-weight
  entries exist.

  Args:
    log_weights: float [E] log of the (unnormalized) weights.
    n_keep: how many to keep (static), 0 <= n_keep <= E.
    key: the randomness.

  Returns:
    float [E] (dtype of log_weights), exactly n_keep ones.
  """
  keys = log_weights + jax.random.gumbel(key, log_weights.shape,
                                         log_weights.dtype)
  kept = jnp.argsort(-keys)[:n_keep]
  return jnp.zeros(log_weights.shape, log_weights.dtype).at[kept].set(1.0)


def renormalize(adj: Csr, n_users: int, keep: jax.Array) -> Csr:
  """Â on the kept edges, re-normalized with the kept degrees, mirrored.

  Args:
    adj: the stored user-item graph over N = U + I nodes (the layout of the
      module docstring).
    n_users: U.
    keep: float [nnz/2] 1 for the kept (user, item) entries, else 0.

  Returns:
    `adj` with values keep_e / sqrt((d'_u + 1e-7)(d'_i + 1e-7)) on both
    halves (d' the kept degrees), 0 on dropped edges; symmetric.
  """
  half = adj.nnz // 2
  rows = adj.rows[:half]
  cols = adj.indices[:half] - n_users
  n_items = adj.n_rows - n_users
  deg_u = jax.ops.segment_sum(keep, rows, num_segments=n_users)
  deg_i = jax.ops.segment_sum(keep, cols, num_segments=n_items)
  user_half = keep * jax.lax.rsqrt(deg_u[rows] + DEGREE_EPS) * jax.lax.rsqrt(
      deg_i[cols] + DEGREE_EPS)
  # The item half lists the same edges ordered by (item, user): a stable
  # sort of the user half by item gives that order.
  mirror = jnp.argsort(cols, stable=True)
  return adj.with_values(jnp.concatenate([user_half, user_half[mirror]]))


def prune_adj(adj: Csr, n_users: int, key: jax.Array,
              dropout: float) -> Csr:
  """FREEDOM's degree-sensitive edge pruning with fixed shapes.

  Args:
    adj: the full normalized graph Â (its user-half values 1/sqrt(d_u d_i)
      are the sampling weights, as MMRec's `edge_values`).
    n_users: U.
    key: randomness of this epoch.
    dropout: the fraction of edges dropped (static).

  Returns:
    Â with the dropped edges' values set to 0 and the kept ones re-normalized
    with the kept degrees, symmetric, same index arrays.
  """
  half = adj.nnz // 2
  n_keep = int(half * (1.0 - dropout))
  keep = sample_edges(jnp.log(adj.values[:half]), n_keep, key)
  return renormalize(adj, n_users, keep)


def distinct_edges(adj: Csr) -> jax.Array:
  """float [nnz/2]: 1 on the first entry of each (user, item) pair, else 0.

  The user half is ordered by (user, item), so a repeated training row is
  the entry right after its first one in the same row.
  """
  half = adj.nnz // 2
  position = jnp.arange(half)
  rows, cols = adj.rows[:half], adj.indices[:half]
  row_start = position == adj.indptr[rows]
  first = row_start | (cols != jnp.roll(cols, 1))
  return first.astype(adj.values.dtype)


def has_bipartite_layout(indptr: np.ndarray, indices: np.ndarray,
                           n_users: int) -> bool:
  """Whether a stored graph has the layout of the module docstring.

  A cheap host check of what pruning relies on: an even nnz, the user rows
  holding exactly the first half of the entries, all pointing at items.
  """
  half = indices.shape[0] // 2
  return not (indices.shape[0] % 2 or indptr[n_users] != half or (
      half and indices[:half].min() < n_users))
