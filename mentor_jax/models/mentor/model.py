"""MENTOR as a Flax NNX module, following the official code (MENTOR_SPEC §1).

The module only holds parameters; the computation lives in pure functions
(`item_mlps`, `propagate`, `forward`) so that it reads like the spec and can
be tested without Flax.

Seven modality encoders share one shape: a user preference table P (U x 64)
and an item MLP f -> 256 -> 64. Their forward passes are batched:

* encoders that read the same input (the visual ones, the textual ones) run
  their first layer as one wide matmul, F @ [W1_a | W1_b | W1_c];
* all encoders propagate together: one SpMM of width 64 x n_encoders per
  layer instead of n_encoders SpMMs of width 64;
* the item-item graph S smooths all encoders' item rows in one pass.

All three are exact re-arrangements of the per-encoder computation.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mentor_jax.ops import graph
from mentor_jax.ops import init as init_lib
from mentor_jax.ops import precision as precision_lib
from mentor_jax.ops import sparse

EMBED_DIM = 64  # `embedding_size`; hard-coded in several places upstream.
HIDDEN_DIM = 256  # Width of the item MLP's hidden layer (`GCN.MLP`).

# Encoder order in every stacked array. The clean encoders come first so the
# light variant (no graph perturbation) is a prefix.
CLEAN = ('v', 't', 'id')
PERTURBED = ('v_n1', 'v_n2', 't_n1', 't_n2')
# With the paper's graph perturbation (Eq. 18-20) the perturbed views are two
# extra passes of the model's own encoders, stacked in the same slots as
# PERTURBED so that `noise_views` reads both layouts.
OWN_PERTURBED = ('v', 'v', 't', 't')

FUSIONS = ('per_user', 'alpha')
NOISES = ('simgcl', 'uniform')
MM_AGGREGATIONS = graph.MM_AGGREGATIONS


class Encoder(nnx.Module):
  """Parameters of one modality encoder (`GCN` upstream)."""

  def __init__(self, n_users: int, in_dim: int, *, rngs: nnx.Rngs):
    init = init_lib.torch_linear_uniform(in_dim)
    self.preference = nnx.Param(
        init_lib.xavier_normal(rngs.params(), (n_users, EMBED_DIM)))
    self.w1 = nnx.Param(init(rngs.params(), (in_dim, HIDDEN_DIM)))
    self.b1 = nnx.Param(init(rngs.params(), (HIDDEN_DIM,)))
    init = init_lib.torch_linear_uniform(HIDDEN_DIM)
    self.w2 = nnx.Param(init(rngs.params(), (HIDDEN_DIM, EMBED_DIM)))
    self.b2 = nnx.Param(init(rngs.params(), (EMBED_DIM,)))


class Mentor(nnx.Module):
  """All trainable state of MENTOR (MENTOR_SPEC §1.2).

  Args:
    n_users, n_items: graph sizes.
    dim_v, dim_t: raw feature widths of the two modalities.
    perturbed: create the four noise encoders (False for the light model,
      MENTOR_g / MENTOR_fg, which never computes them, and for the paper's
      graph perturbation, which perturbs the model's own v and t encoders).
    fusion: 'per_user' (code: a U x 2 table `weight_u` weights the user
      side) or 'alpha' (paper Eq. 7: one trainable scalar `alpha`, init 0.5,
      weighting users and items; `weight_u` is then not created).
    rngs: NNX random streams.
  """

  def __init__(self, n_users: int, n_items: int, dim_v: int, dim_t: int, *,
               perturbed: bool = True, fusion: str = 'per_user',
               rngs: nnx.Rngs):
    if fusion not in FUSIONS:
      raise ValueError(f'fusion must be one of {FUSIONS}, got {fusion!r}')
    self.n_users = n_users
    self.n_items = n_items
    in_dims = {'v': dim_v, 't': dim_t, 'id': EMBED_DIM,
               'v_n1': dim_v, 'v_n2': dim_v, 't_n1': dim_t, 't_n2': dim_t}
    names = CLEAN + (PERTURBED if perturbed else ())
    self.encoders = nnx.Dict(
        {n: Encoder(n_users, in_dims[n], rngs=rngs) for n in names})
    self.id_feat = nnx.Param(init_lib.xavier_normal(rngs.params(),
                                            (n_items, EMBED_DIM)))
    # Per-user modality weights: softmax over the two modalities once, at
    # init; afterwards a free parameter (no softmax in the forward pass).
    # Drawn in both fusion modes so that every other parameter gets the same
    # initial value whichever fusion is chosen.
    raw = init_lib.xavier_normal(rngs.params(), (n_users, 2))
    if fusion == 'alpha':
      # Unconstrained, as in the paper (no sigmoid): alpha and 1 - alpha.
      self.alpha = nnx.Param(jnp.asarray(0.5, jnp.float32))
    else:
      self.weight_u = nnx.Param(jax.nn.softmax(raw, axis=1))
    # The feature-masking predictor (`mlp`, 128 -> 128). Under the official
    # semantics it only feeds a loss computed without gradient.
    init = init_lib.torch_linear_uniform(2 * EMBED_DIM)
    self.mask_w = nnx.Param(init(rngs.params(), (2 * EMBED_DIM,
                                                 2 * EMBED_DIM)))
    self.mask_b = nnx.Param(init(rngs.params(), (2 * EMBED_DIM,)))

  @property
  def perturbed(self) -> bool:
    return 'v_n1' in self.encoders


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """F.normalize(x, dim=-1) written as torch does: x / max(||x||, eps).

  Not `ops.losses.l2_normalize` (sqrt(max(|x|^2, eps^2)), the form with a
  finite gradient at 0 that the losses use): the two differ in float32's
  last bit, and this one keeps MENTOR's recorded runs reproducible bit for
  bit.
  """
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / jnp.maximum(norm, eps)


def item_mlps(features: jax.Array, encoders: Sequence[Encoder],
              precision: str = 'float32') -> jax.Array:
  """LeakyReLU(F W1 + b1) W2 + b2 for encoders sharing the input F.

  `precision`: of both matmuls, see `mentor_jax/ops/precision.py`.

  Returns:
    [I, n_encoders, 64].
  """
  w1 = jnp.concatenate([e.w1[...] for e in encoders], axis=1)
  b1 = jnp.concatenate([e.b1[...] for e in encoders], axis=0)
  hidden = jax.nn.leaky_relu(
      precision_lib.matmul(features, w1, precision) + b1, negative_slope=0.01)
  hidden = hidden.reshape(features.shape[0], len(encoders), HIDDEN_DIM)
  w2 = jnp.stack([e.w2[...] for e in encoders])  # [n, 256, 64]
  b2 = jnp.stack([e.b2[...] for e in encoders])  # [n, 64]
  return precision_lib.einsum('inh,nhd->ind', hidden, w2, precision) + b2


def uniform_rows(key: jax.Array, shape: Sequence[int],
                 dtype=jnp.float32, block_rows: int = 4096) -> jax.Array:
  """U[0, 1) of `shape`, drawn in blocks of `block_rows` leading rows.

  The same distribution as `jax.random.uniform(key, shape)` (other values).
  Why blocks: threefry holds several uint32 arrays of the output's size
  while it hashes, and drawn in one piece the noise of MENTOR's four
  perturbed encoders ([U + I, 4, 64] per layer) set the training step's
  peak; blockwise the Baby epoch program's XLA temp memory fell from 651 to
  518 MiB (bench/RESULTS.md). Row block b uses fold_in(key, b), so the
  values do not depend on how the rows are later sharded.
  """
  n, rest = shape[0], tuple(shape[1:])
  if n <= block_rows:
    return jax.random.uniform(key, tuple(shape), dtype)
  n_blocks = -(-n // block_rows)
  blocks = jax.lax.map(
      lambda b: jax.random.uniform(jax.random.fold_in(key, b),
                                   (block_rows,) + rest, dtype),
      jnp.arange(n_blocks))
  return blocks.reshape((n_blocks * block_rows,) + rest)[:n]


def perturb(h: jax.Array, key: jax.Array, eps: float) -> jax.Array:
  """SimGCL-style noise: h + eps * sign(h) * rownorm(U[0, 1))."""
  noise = l2_normalize(uniform_rows(key, h.shape, h.dtype))
  return h + eps * jnp.sign(h) * noise


def perturb_uniform(h: jax.Array, key: jax.Array, eps: float) -> jax.Array:
  """Paper Eq. 18-19: h + eps * Delta, Delta ~ U(0, 1) per node and entry.

  The paper adds U(0, 1) noise unscaled (eps = 1, what configs/paper.py
  sets) and neither sign-aligns nor normalizes it. A fresh vector per node:
  one vector shared by all nodes would be a constant shift (see
  docs/paper_vs_code.md).
  """
  return h + eps * uniform_rows(key, h.shape, h.dtype)


_NOISE_FNS = {'simgcl': perturb, 'uniform': perturb_uniform}


def propagate(x0: jax.Array, adj: sparse.Csr, *, n_layers: int,
              n_clean: int, key: jax.Array | None, eps: float,
              kernel: str, noise: str = 'simgcl') -> jax.Array:
  """Sum of layers 0..L of A-hat propagation for stacked encoders.

  Args:
    x0: [N, n_encoders, 64] layer-0 embeddings (already row-normalized).
    adj: the normalized user-item graph.
    n_layers: propagation depth (2 upstream, hard-coded).
    n_clean: encoders [0, n_clean) are clean; the rest get noise after each
      layer (never at layer 0), as the perturbed encoders upstream.
    key: randomness for the noise (fresh per layer); unused if all are clean.
    eps: noise norm (0.1 upstream).
    kernel: sparse kernel name, see `sparse.spmm`.
    noise: 'simgcl' (`perturb`, the code) or 'uniform' (`perturb_uniform`,
      paper Eq. 18-19).

  Returns:
    [N, n_encoders, 64].
  """
  noise_fn = _NOISE_FNS[noise]
  n, n_enc, dim = x0.shape
  h, total = x0, x0
  for layer in range(n_layers):
    h = sparse.spmm(adj, h.reshape(n, n_enc * dim),
                    kernel=kernel).reshape(n, n_enc, dim)
    if n_clean < n_enc:
      noisy = noise_fn(h[:, n_clean:], jax.random.fold_in(key, layer), eps)
      h = jnp.concatenate([h[:, :n_clean], noisy], axis=1)
    total = total + h
  return total


class Embeddings(NamedTuple):
  """Per-encoder outputs, users and (S-smoothed) items."""

  users: jax.Array  # [U, n_encoders, 64]
  items: jax.Array  # [I, n_encoders, 64], already x + S x
  weight_u: jax.Array  # [U, 2], or [1, 2] = [alpha, 1 - alpha]
  # Item-side modality weights: None (code: unweighted) or [1, 2] (paper
  # Eq. 7 weights items by alpha too).
  weight_i: jax.Array | None = None


def forward(model: Mentor, feat_v: jax.Array, feat_t: jax.Array,
            adj: sparse.Csr, knn_v: jax.Array, knn_t: jax.Array,
            key: jax.Array | None, *, mm_image_weight: float = 0.1,
            n_mm_layers: int = 1, n_ui_layers: int = 2,
            noise_eps: float = 0.1, kernel: str = 'csr',
            perturb_own: bool = False, noise: str = 'simgcl',
            mm_aggregation: str = 'power',
            precision: str = 'float32') -> Embeddings:
  """Runs every encoder of `model` over the whole graph.

  `key` drives the perturbed encoders' noise; it may be None for a model
  without them.

  With `perturb_own` (paper Eq. 18-20; the model must have no separate
  noise encoders) the v and t encoders each run two more perturbed passes,
  stacked as OWN_PERTURBED: their item MLP outputs and preference tables
  are shared with the clean pass, so the InfoNCE trains them directly.
  `noise` picks the noise (see `propagate`); `mm_aggregation` the
  item-item aggregation (see `item_graph`); `precision` the item MLPs'
  matmul precision (`mentor_jax/ops/precision.py`).
  """
  enc = model.encoders
  if perturb_own and model.perturbed:
    raise ValueError('perturb_own needs a model without separate noise '
                     'encoders (Mentor(..., perturbed=False))')
  names = list(enc.keys())
  by_input = {
      'v': [n for n in names if n.startswith('v')],
      't': [n for n in names if n.startswith('t')],
  }
  z = {}
  for group, feats in (('v', feat_v), ('t', feat_t)):
    out = item_mlps(feats, [enc[n] for n in by_input[group]], precision)
    z.update({n: out[:, j] for j, n in enumerate(by_input[group])})
  z['id'] = item_mlps(model.id_feat[...], [enc['id']], precision)[:, 0]

  order = [n for n in CLEAN + PERTURBED if n in enc]
  if perturb_own:
    order += list(OWN_PERTURBED)
  users = jnp.stack([enc[n].preference[...] for n in order], axis=1)
  items = jnp.stack([z[n] for n in order], axis=1)
  x0 = l2_normalize(jnp.concatenate([users, items], axis=0))
  h = propagate(x0, adj, n_layers=n_ui_layers, n_clean=len(CLEAN), key=key,
                eps=noise_eps, kernel=kernel, noise=noise)
  n_users = users.shape[0]
  u, i = h[:n_users], h[n_users:]
  n_items, n_enc, dim = i.shape
  flat = i.reshape(n_items, n_enc * dim)
  smooth = graph.item_graph(flat, knn_v, knn_t,
                            image_weight=mm_image_weight,
                            n_layers=n_mm_layers, aggregation=mm_aggregation,
                            kernel=kernel)
  items = (flat + smooth).reshape(n_items, n_enc, dim)
  if 'alpha' in vars(model):
    alpha = model.alpha[...]
    w = jnp.stack([alpha, 1.0 - alpha]).reshape(1, 2)
    return Embeddings(u, items, w, w)
  return Embeddings(u, items, model.weight_u[...])


def encoder_index(model: Mentor, name: str) -> int:
  """Position of encoder `name` in the stacked `Embeddings` arrays."""
  order = [n for n in CLEAN + PERTURBED if n in model.encoders]
  return order.index(name)


class Views(NamedTuple):
  """The 128-d views of MENTOR_SPEC §1.5 (users, items)."""

  fused_u: jax.Array  # R^u, used for scoring
  fused_i: jax.Array  # R^i
  ident_u: jax.Array  # G
  ident_i: jax.Array
  visual_u: jax.Array  # V
  visual_i: jax.Array
  textual_u: jax.Array  # T
  textual_i: jax.Array


def build_views(emb: Embeddings) -> Views:
  """Concatenations of §1.5; only R^u carries the per-user weights.

  (R^i is weighted too when `emb.weight_i` is set: paper Eq. 7's alpha.)
  """
  u, i, w = emb.users, emb.items, emb.weight_u
  ev, et, eid = u[:, 0], u[:, 1], u[:, 2]
  sv, st, sid = i[:, 0], i[:, 1], i[:, 2]
  cat = lambda a, b: jnp.concatenate([a, b], axis=1)
  wi = emb.weight_i
  fused_i = cat(sv, st) if wi is None else cat(wi[:, :1] * sv, wi[:, 1:] * st)
  return Views(
      fused_u=cat(w[:, :1] * ev, w[:, 1:] * et), fused_i=fused_i,
      ident_u=cat(eid, eid), ident_i=cat(sid, sid),
      visual_u=cat(ev, ev), visual_i=cat(sv, sv),
      textual_u=cat(et, et), textual_i=cat(st, st))


def noise_views(emb: Embeddings) -> tuple[tuple[jax.Array, jax.Array],
                                          tuple[jax.Array, jax.Array]]:
  """((N1^u, N1^i), (N2^u, N2^i)) from the four perturbed encoders."""
  u, i, w = emb.users, emb.items, emb.weight_u
  wi = emb.weight_i
  # Stacked order: v, t, id, v_n1, v_n2, t_n1, t_n2.
  views = []
  for v_idx, t_idx in ((3, 5), (4, 6)):
    nu = jnp.concatenate([w[:, :1] * u[:, v_idx], w[:, 1:] * u[:, t_idx]], 1)
    if wi is None:
      ni = jnp.concatenate([i[:, v_idx], i[:, t_idx]], 1)
    else:
      ni = jnp.concatenate([wi[:, :1] * i[:, v_idx], wi[:, 1:] * i[:, t_idx]],
                           1)
    views.append((nu, ni))
  return tuple(views)


def modality_noise_views(emb: Embeddings) -> tuple[tuple[jax.Array,
                                                          jax.Array], ...]:
  """Paper Eq. 21's view pairs, one modality at a time (64-d, unweighted).

  Returns:
    ((V1^u, V2^u), (V1^i, V2^i), (T1^u, T2^u), (T1^i, T2^i)).
  """
  u, i = emb.users, emb.items
  return ((u[:, 3], u[:, 4]), (i[:, 3], i[:, 4]),
          (u[:, 5], u[:, 6]), (i[:, 5], i[:, 6]))
