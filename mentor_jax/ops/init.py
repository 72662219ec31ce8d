"""PyTorch's parameter initializers, so that models start where upstream's do.

In distribution, not in values: JAX's random streams differ from torch's.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp


def xavier_uniform(key: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """torch.nn.init.xavier_uniform_ (gain 1) for a 2-D tensor."""
  bound = math.sqrt(6.0 / (shape[0] + shape[1]))
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def xavier_normal(key: jax.Array, shape: Sequence[int],
                  dtype=jnp.float32) -> jax.Array:
  """torch.nn.init.xavier_normal_ (gain 1); fans as torch computes them."""
  fan_out, fan_in = shape[0], math.prod(shape[1:])
  std = math.sqrt(2.0 / (fan_in + fan_out))
  return std * jax.random.normal(key, tuple(shape), dtype)


def torch_linear_uniform(fan_in: int) -> Callable[..., jax.Array]:
  """nn.Linear's default init of weight and bias: U(-1/sqrt(fan_in), ...).

  kaiming_uniform_(a=sqrt(5)) on the weight and the bias rule both reduce
  to this bound.

  Returns:
    init(key, shape, dtype=float32).
  """
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_linear_init(key: jax.Array, d_in: int, d_out: int
                      ) -> tuple[jax.Array, jax.Array]:
  """nn.Linear's default init, as (W [d_in, d_out], b [d_out])."""
  kw, kb = jax.random.split(key)
  init = torch_linear_uniform(d_in)
  return init(kw, (d_in, d_out)), init(kb, (d_out,))


def feature_model_tables(next_key: Callable[[], jax.Array], n_users: int,
                         feat_v: jax.Array, feat_t: jax.Array, dim: int,
                         feat_dim: int) -> dict[str, jax.Array]:
  """The trainable arrays FREEDOM and LATTICE share, drawn in MMRec's order.

  User and item ID tables (xavier), trainable float32 copies of the raw
  image and text features, and an nn.Linear projection of each to
  `feat_dim`. `next_key()` gives the next key (`nnx.Rngs.params`).
  """
  n_items = feat_v.shape[0]
  tables = {
      'user_emb': xavier_uniform(next_key(), (n_users, dim)),
      'item_emb': xavier_uniform(next_key(), (n_items, dim)),
      'feat_v': jnp.asarray(feat_v, jnp.float32),
      'feat_t': jnp.asarray(feat_t, jnp.float32),
  }
  for name, feats in (('v', feat_v), ('t', feat_t)):
    w, b = torch_linear_init(next_key(), feats.shape[1], feat_dim)
    tables[f'proj_{name}_w'], tables[f'proj_{name}_b'] = w, b
  return tables
