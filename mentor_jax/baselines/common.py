"""Pieces the MMRec baselines share: MMRec's loss forms, inits, LightGCN.

Everything here follows `enoche/MMRec` (src/common/loss.py, src/common/
init.py, src/models/lightgcn.py); no Flax, so the functions are easy to test
against numpy.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mentor_jax import sparse

# MMRec's BPRLoss adds gamma inside the log: -log(gamma + sigmoid(d)).
BPR_GAMMA = 1e-10


def mmrec_bpr_loss(pos: jax.Array, neg: jax.Array, mask: jax.Array,
                   gamma: float = BPR_GAMMA) -> jax.Array:
  """MMRec's `BPRLoss`: mean over real rows of -ln(gamma + sigmoid(pos-neg)).

  Used by MF-BPR and LightGCN. It differs from `losses.bpr_loss` (log2 in
  MENTOR, ln via log_sigmoid in FREEDOM) by the gamma, which floors the
  per-row loss at -ln(1e-10) ~ 23 and so zeroes the gradient of hopeless
  rows; kept for parity.

  Args:
    pos: [B] positive scores.
    neg: [B] negative scores.
    mask: [B] 1 for real rows, 0 for the padding of the last batch.
    gamma: the additive constant.

  Returns:
    Scalar.
  """
  per_row = -jnp.log(gamma + jax.nn.sigmoid(pos - neg))
  return jnp.sum(per_row * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def mmrec_emb_loss(tables: tuple[jax.Array, ...],
                   mask: jax.Array) -> jax.Array:
  """MMRec's `EmbLoss`: sum of Frobenius norms (not squared) / batch size.

  `torch.norm(x, p=2)` of a 2-D batch is the Frobenius norm of the whole
  batch, so the penalty grows like sqrt(B) and is then divided by B (the
  number of real rows; padded rows are masked out of the norms).

  Args:
    tables: [B, d] gathered embedding rows, e.g. (user, pos, neg).
    mask: [B] 1 for real rows.

  Returns:
    Scalar.
  """
  total = 0.0
  for x in tables:
    sq = jnp.sum(jnp.sum(x * x, axis=-1) * mask)
    # A safe sqrt: the gradient of sqrt at 0 is inf, and 0 * inf is NaN.
    positive = sq > 0
    total = total + jnp.where(positive,
                              jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  return total / jnp.maximum(jnp.sum(mask), 1.0)


def xavier_uniform(key: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """torch.nn.init.xavier_uniform_ (gain 1) for a 2-D tensor."""
  bound = math.sqrt(6.0 / (shape[0] + shape[1]))
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def xavier_normal(key: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """torch.nn.init.xavier_normal_ (gain 1) for a 2-D tensor."""
  std = math.sqrt(2.0 / (shape[0] + shape[1]))
  return std * jax.random.normal(key, shape, jnp.float32)


def torch_linear_init(key: jax.Array, d_in: int, d_out: int
                      ) -> tuple[jax.Array, jax.Array]:
  """nn.Linear's default init, as (W [d_in, d_out], b [d_out]).

  kaiming_uniform_(a=sqrt(5)) on the weight and the bias rule both reduce to
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  """
  kw, kb = jax.random.split(key)
  bound = 1.0 / math.sqrt(d_in)
  w = jax.random.uniform(kw, (d_in, d_out), jnp.float32, -bound, bound)
  b = jax.random.uniform(kb, (d_out,), jnp.float32, -bound, bound)
  return w, b


def layer_mean_propagate(adj: sparse.Csr, ego: jax.Array, n_layers: int,
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
