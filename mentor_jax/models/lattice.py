"""LATTICE (Zhang et al., MM 2021) as in MMRec's src/models/lattice.py.

* User-item graph: MMRec's own `get_adj_mat`, the row-normalized
  P = D^-1 (A + I) with self-loops (D the row sums of A + I; a repeated
  training row counts twice), not the symmetric Â the other models use.
  Users and items: LightGCN's layer mean over [E, P E, P² E]
  (n_ui_layers = len(weight_size) = 2, cf_model 'lightgcn').
* Item-item graph G = (1 - λ) L + λ O, both built from kNN graphs whose
  entries are cosine similarities (k = knn_k per row, self included):
  - O = w_v O_v + w_t O_t, O_m = D^-1/2 S_m D^-1/2 of the kNN graph of the
    raw features m (frozen; D the row sums, `compute_normalized_laplacian`);
  - L = D^-1/2 (w_v S'_v + w_t S'_t) D^-1/2 of the kNN graphs of the
    projected features (trainable copies of the raw features through a
    linear map each), with w = softmax(modal_weight), trainable, init
    [0.5, 0.5]. Each kNN graph is built blockwise
    (`graph.knn_from_embeddings_blockwise`): no I x I matrix is formed.
  Items add normalize(G^{n_layers} E_item).
* Loss: -mean ln σ(pos - neg) + reg_weight * (|u|² + |p|² + |n|²) / 2
  / train_batch_size (the configured size, also for a short last batch) on
  the propagated rows.
* When the graph is built: as MMRec, in the first batch of each epoch
  (`build_item_graph`, with gradient into the projections, feature tables
  and modal weights through the kept similarity values), then reused,
  detached, for the rest of the epoch: `epoch_setup` builds it from the
  epoch's starting parameters, and the family's `train_step` runs `loss`
  in the first step and the loss on that graph in the others. Scoring
  rebuilds G with the current parameters.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mentor_jax import config_spec as spec
from mentor_jax import data as data_lib
from mentor_jax import family
from mentor_jax.ops import graph
from mentor_jax.ops import init as init_lib
from mentor_jax.ops import losses
from mentor_jax.ops import sparse


@dataclasses.dataclass(frozen=True)
class Hparams(family.TrainHparams):
  reg_weight: float = 1e-4
  lambda_coeff: float = 0.9
  knn_k: int = 10
  n_layers: int = 1  # item-item graph layers
  n_ui_layers: int = 2  # len(weight_size) in MMRec
  graph_block_size: int = 1024  # rows per similarity tile (memory only)
  spmm_kernel: str = 'csr'


class Constant(nnx.Variable):
  """A non-trainable array of the model (the frozen feature graphs)."""


class Lattice(nnx.Module):
  """ID tables, trainable feature copies, projections, modal weights."""

  def __init__(self, n_users: int, feat_v: np.ndarray, feat_t: np.ndarray,
               knn_v: np.ndarray, knn_t: np.ndarray, dim: int, feat_dim: int,
               *, rngs: nnx.Rngs):
    for name, value in init_lib.feature_model_tables(
        rngs.params, n_users, feat_v, feat_t, dim, feat_dim).items():
      setattr(self, name, nnx.Param(value))
    self.modal_weight = nnx.Param(jnp.array([0.5, 0.5], jnp.float32))
    # O_v and O_t from the raw features, once (MMRec caches them on disk).
    self.orig_cols_v = Constant(jnp.asarray(knn_v, jnp.int32))
    self.orig_vals_v = Constant(sym_normalize(
        knn_v, knn_cosine_numpy(feat_v, knn_v)))
    self.orig_cols_t = Constant(jnp.asarray(knn_t, jnp.int32))
    self.orig_vals_t = Constant(sym_normalize(
        knn_t, knn_cosine_numpy(feat_t, knn_t)))


def knn_cosine_numpy(feats: np.ndarray, knn: np.ndarray) -> np.ndarray:
  """cos(f_i, f_knn[i, c]) for the stored neighbour lists, [I, k] float32."""
  f = np.asarray(feats, np.float64)
  unit = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
  return np.stack([np.sum(unit * unit[knn[:, c]], axis=1)
                   for c in range(knn.shape[1])], axis=1).astype(np.float32)


def sym_normalize(cols: jax.Array, vals: jax.Array) -> jax.Array:
  """Values of D^-1/2 S D^-1/2 for S in the [I, m] neighbour layout.

  D holds the row sums of S (MMRec's `compute_normalized_laplacian`, which
  uses row sums also for the column side). A zero row sum gives zero, as
  upstream's inf -> 0.
  """
  cols, vals = jnp.asarray(cols), jnp.asarray(vals)
  d = jnp.sum(vals, axis=1)
  nonzero = d != 0
  inv_sqrt = jnp.where(nonzero, jax.lax.rsqrt(jnp.where(nonzero, d, 1.0)),
                       0.0)
  return inv_sqrt[:, None] * vals * inv_sqrt[cols]


def _projected(model: Lattice) -> tuple[jax.Array, jax.Array]:
  fv = model.feat_v[...] @ model.proj_v_w[...] + model.proj_v_b[...]
  ft = model.feat_t[...] @ model.proj_t_w[...] + model.proj_t_b[...]
  return fv, ft


def epoch_graph(model: Lattice, hp: Hparams
                ) -> tuple[jax.Array, jax.Array]:
  """G = (1 - λ) L + λ O with the current parameters, differentiable.

  Returns:
    (cols int32 [I, 4k], vals [I, 4k]): G in the neighbour layout; a
    column may repeat (the entries add up).
  """
  fv, ft = _projected(model)
  w = jax.nn.softmax(model.modal_weight[...])
  cv, sv = graph.knn_from_embeddings_blockwise(
      fv, hp.knn_k, block_size=hp.graph_block_size)
  ct, st = graph.knn_from_embeddings_blockwise(
      ft, hp.knn_k, block_size=hp.graph_block_size)
  learned_cols = jnp.concatenate([cv, ct], axis=1)
  learned = sym_normalize(learned_cols,
                          jnp.concatenate([w[0] * sv, w[1] * st], axis=1))
  lam = hp.lambda_coeff
  cols = jnp.concatenate([learned_cols, model.orig_cols_v[...],
                          model.orig_cols_t[...]], axis=1)
  vals = jnp.concatenate([(1.0 - lam) * learned,
                          lam * w[0] * model.orig_vals_v[...],
                          lam * w[1] * model.orig_vals_t[...]], axis=1)
  return cols, vals


def apply_item_graph(cols: jax.Array, vals: jax.Array, x: jax.Array, *,
                     kernel: str, value_grad: bool) -> jax.Array:
  """G x, with the gradient in x always and in G's values if asked.

  The product runs through `sparse.spmm` (its kernels carry no gradient for
  the values); with `value_grad` a zero-valued term adds d(Gx)/dG.
  """
  a, a_t = graph.neighbour_csr(cols, jax.lax.stop_gradient(vals))
  out = sparse.spmm(a, x, kernel=kernel, a_t=a_t)
  if value_grad:
    delta = vals - jax.lax.stop_gradient(vals)  # 0, with d/dvals = 1
    fixed = jax.lax.stop_gradient(x)
    out = out + sum(delta[:, c:c + 1] * fixed[cols[:, c]]
                    for c in range(cols.shape[1]))
  return out


def ui_graph(data: data_lib.DeviceData) -> tuple[sparse.Csr, jax.Array]:
  """MMRec's D^-1 (A + I) as (M, D^-1/2) with P x = D^-1/2 M D^1/2 x + x/D.

  M = D^-1/2 A D^-1/2 is symmetric, so every spmm kernel (the 'csr' one's
  backward included) applies it without a transpose. Degrees count the
  stored entries, so a repeated training row counts twice, as upstream's
  summed interaction matrix does.
  """
  adj = data.adj
  ones = jnp.ones_like(adj.values)
  d = jax.ops.segment_sum(ones, adj.rows, num_segments=adj.n_rows) + 1.0
  inv_sqrt = jax.lax.rsqrt(d)
  m = adj.with_values(inv_sqrt[adj.rows] * inv_sqrt[adj.indices])
  return m, inv_sqrt


def forward(model: Lattice, data: data_lib.DeviceData, hp: Hparams,
            item_graph: tuple[jax.Array, jax.Array], *,
            value_grad: bool) -> tuple[jax.Array, jax.Array]:
  """(users, items) for the item-item graph `item_graph` (cols, vals)."""
  cols, vals = item_graph
  h = model.item_emb[...]
  for _ in range(hp.n_layers):
    h = apply_item_graph(cols, vals, h, kernel=hp.spmm_kernel,
                         value_grad=value_grad)
  users = model.user_emb[...]
  x = jnp.concatenate([users, model.item_emb[...]], axis=0)
  m, inv_sqrt = ui_graph(data)
  total = x
  for _ in range(hp.n_ui_layers):
    x = inv_sqrt[:, None] * sparse.spmm(m, x / inv_sqrt[:, None],
                                        kernel=hp.spmm_kernel) + (
                                            x * (inv_sqrt ** 2)[:, None])
    total = total + x
  out = total / (hp.n_ui_layers + 1)
  n_users = users.shape[0]
  return out[:n_users], out[n_users:] + losses.l2_normalize(h)


def loss_with_graph(model: Lattice, data: data_lib.DeviceData,
                    batch: data_lib.Batches, hp: Hparams,
                    item_graph: tuple[jax.Array, jax.Array], *,
                    value_grad: bool) -> family.LossOutput:
  """The loss for a given item graph (MMRec's `bpr_loss`).

  `value_grad=False` is MMRec's `item_adj.detach()` (every batch of an
  epoch but the first).
  """
  users, items = forward(model, data, hp, item_graph, value_grad=value_grad)
  u = users[batch.users]
  p, n = items[batch.pos_items], items[batch.neg_items]
  pos, neg = jnp.sum(u * p, -1), jnp.sum(u * n, -1)
  mask = batch.mask
  squares = jnp.sum((jnp.sum(u * u, -1) + jnp.sum(p * p, -1)
                     + jnp.sum(n * n, -1)) * mask)
  parts = {
      'bpr': losses.bpr_loss(pos, neg, mask, log_base=math.e),
      # Divided by the configured batch size, not the rows present.
      'reg': hp.reg_weight * 0.5 * squares / hp.batch_size,
  }
  return sum(parts.values()), (parts, (users, items))


def loss(model: Lattice, data: data_lib.DeviceData, batch: data_lib.Batches,
         key: jax.Array, hp: Hparams, aux: Any = None) -> family.LossOutput:
  """MMRec's first-batch loss: G built now, with gradient through it."""
  del key, aux
  return loss_with_graph(model, data, batch, hp, epoch_graph(model, hp),
                         value_grad=True)


def epoch_setup(ctx: family.EpochContext, params: Any, opt_state: Any,
                key: jax.Array) -> family.EpochStart:
  """G from the epoch's starting parameters, detached, as `aux`: the graph
  the first step builds, which the later steps of the epoch reuse."""
  del key
  graph_ = jax.lax.stop_gradient(epoch_graph(ctx.model(params), ctx.hp))
  return family.EpochStart(params, opt_state, aux=graph_)


def train_step(ctx: family.EpochContext, params: Any, opt_state: Any,
               batch: data_lib.Batches, key: jax.Array,
               index: jax.Array) -> family.StepOutput:
  """MMRec's schedule: `loss` (G built with gradient) in the epoch's first
  step; in the others the loss on `ctx.aux`, G reused detached
  (`item_adj.detach()`), one `lax.cond`."""
  def first(params, batch, key):
    return loss(ctx.model(params), ctx.data, batch, key, ctx.hp)

  def later(params, batch, key):
    del key
    return loss_with_graph(ctx.model(params), ctx.data, batch, ctx.hp,
                           ctx.aux, value_grad=False)

  def loss_fn(params, batch, key, index):
    return jax.lax.cond(index == 0, first, later, params, batch, key)
  return family.apply_gradients(ctx, loss_fn, params, opt_state, batch, key,
                                index)


def score(model: Lattice, data: data_lib.DeviceData,
          hp: Hparams) -> tuple[jax.Array, jax.Array]:
  # full_sort_predict: forward(build_item_graph=True), current parameters.
  return forward(model, data, hp, epoch_graph(model, hp), value_grad=False)


def create_model(config: Any, dataset: data_lib.Dataset) -> Lattice:
  a = dataset.arrays
  k = config.knn_k
  if a['knn_v'].shape[1] < k:
    raise ValueError(f'{dataset.path}: knn_v stores {a["knn_v"].shape[1]} '
                     f'neighbours per item; LATTICE needs knn_k={k}.')
  if k > dataset.n_items:
    raise ValueError(f'config.knn_k={k} exceeds the {dataset.n_items} items '
                     f'of {dataset.path}.')
  return Lattice(dataset.n_users, a['feat_v'], a['feat_t'],
                 np.ascontiguousarray(a['knn_v'][:, :k]),
                 np.ascontiguousarray(a['knn_t'][:, :k]),
                 config.embedding_size,
                 config.get('feat_embed_dim', config.embedding_size),
                 rngs=nnx.Rngs(params=config.seed))


LATTICE_FAMILY = family.ModelFamily(
    name='lattice', display_name='LATTICE', hparams=Hparams,
    create_model=create_model, loss=loss, score=score,
    epoch_setup=epoch_setup, train_step=train_step,
    sweepable=frozenset({'reg_weight', 'lambda_coeff'}),
    table_params=('user_emb', 'item_emb', 'feat_v', 'feat_t'),
    report_keys=('lambda_coeff',),
    # LATTICE.yaml: feat_embed_dim 64, its learning_rate_scheduler and
    # grid; the default cell is reg_weight 1e-4 at lr 1e-3.
    defaults={'embedding_size': 64, 'feat_embed_dim': 64,
              'learning_rate_scheduler': (0.96, 50),
              'grid': {'reg_weight': (0.0, 1e-5, 1e-4, 1e-3),
                       'learning_rate': (1e-4, 5e-4, 1e-3, 5e-3)}},
    config_spec=family.spec_from_hparams(
        Hparams, embedding_size=spec.integer(1),
        feat_embed_dim=spec.integer(1), reg_weight=spec.NON_NEGATIVE,
        lambda_coeff=spec.number(0.0, 1.0), knn_k=spec.integer(1),
        n_layers=spec.integer(0), n_ui_layers=spec.integer(0),
        graph_block_size=spec.integer(1)))
