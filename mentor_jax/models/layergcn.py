"""LayerGCN (Zhou et al., ICDE 2023) as in MMRec's src/models/layergcn.py.

ID-only. What MMRec's code computes (docs/paper_vs_code.md has the
differences from the paper):

* Parameters: user and item ID tables, xavier-uniform.
* Graph: the distinct training (user, item) pairs (`inter_matrix(...)
  .astype(float32)` merges repeated rows), Â = D^-1/2 A D^-1/2 with the
  degrees + 1e-7 (`full_graph`).
* Layer-refined propagation: x0 = [E_u; E_i]; per layer y = Â x_{l-1},
  x_l = cos(y, x0) * y row-wise (the refined x_l feeds the next layer);
  the output is x_1 + ... + x_L, without x0 (`layer_refined_propagate`).
* Per epoch (`pre_epoch_processing`, `epoch_setup` here): with dropout
  p > 0, keep int(E (1 - p)) of the E edges and re-normalize with the kept
  degrees (+ 1e-7), mirrored. The sampler alternates, starting at epoch 0:
  even epochs degree-sensitive (`torch.multinomial` without replacement,
  weights (d_u+1e-7)^-1/2 (d_i+1e-7)^-1/2 of the full graph), odd epochs
  uniform (`random.sample`). The parity is the epoch index the trainer
  counts from the optimizer steps, so it survives a resume. p = 0 trains
  on the full graph.
* Loss: a SUM over the batch, not a mean: sum -ln σ(pos - neg) on the
  propagated rows + reg_weight * ½ (|u|² + |p|² + |n|²) summed over the
  batch's ego (layer-0) rows (`L2Loss`).
* Scores: a fresh forward on the full graph (`full_sort_predict`), i.e.
  the trainer's eval_embeddings='recompute'.

Pruning is a value mask over the static edge list (ops/pruning.py), shared
with FREEDOM. Repeated training rows (data_prep can keep them) are repeated
entries of the stored Â; here they get value 0 and are never sampled, so
the graph, the degrees and E are MMRec's distinct pairs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mentor_jax import config_spec as spec
from mentor_jax import data as data_lib
from mentor_jax import family
from mentor_jax.ops import init as init_lib
from mentor_jax.ops import losses
from mentor_jax.ops import pruning
from mentor_jax.ops import sparse


@dataclasses.dataclass(frozen=True)
class Hparams(family.TrainHparams):
  # LayerGCN.yaml's first grid cell.
  reg_weight: float = 1e-2
  n_layers: int = 4
  dropout: float = 0.0
  spmm_kernel: str = 'csr'


class LayerGCN(nnx.Module):
  """Ego embeddings [U, d] and [I, d]."""

  def __init__(self, n_users: int, n_items: int, dim: int, n_edges: int, *,
               rngs: nnx.Rngs):
    self.user_emb = nnx.Param(init_lib.xavier_uniform(rngs.params(),
                                                      (n_users, dim)))
    self.item_emb = nnx.Param(init_lib.xavier_uniform(rngs.params(),
                                                      (n_items, dim)))
    # E, the distinct training pairs: static (in the graph definition),
    # because the number of kept edges int(E (1 - p)) is a slice length.
    self.n_edges = n_edges


def distinct_pair_count(train_indptr: np.ndarray,
                        train_items: np.ndarray) -> int:
  """Distinct (user, item) training pairs, from the per-user sorted CSR."""
  items = np.asarray(train_items)
  rows = np.repeat(np.arange(len(train_indptr) - 1), np.diff(train_indptr))
  new = np.ones(items.shape, bool)
  new[1:] = (items[1:] != items[:-1]) | (rows[1:] != rows[:-1])
  return int(new.sum())


def full_graph(adj: sparse.Csr, n_users: int) -> sparse.Csr:
  """MMRec's `norm_adj_matrix`: Â over the distinct pairs, degrees + 1e-7."""
  return pruning.renormalize(adj, n_users, pruning.distinct_edges(adj))


def layer_refined_propagate(adj: sparse.Csr, ego: jax.Array, n_layers: int,
                            kernel: str) -> jax.Array:
  """sum_{l=1..L} x_l with x_l = cos(Â x_{l-1}, x_0) * Â x_{l-1}, x_0 = ego.

  Args:
    adj: the (pruned or full) normalized graph over N = U + I nodes,
      symmetric (the 'csr' kernel's backward uses it as its transpose).
    ego: [N, d] layer-0 embeddings, users first.
    n_layers: L (static).
    kernel: `sparse.spmm` kernel.

  Returns:
    [N, d].
  """
  x, layers = ego, []
  for _ in range(n_layers):
    y = sparse.spmm(adj, x, kernel=kernel)
    # F.cosine_similarity(y, ego, dim=-1) (eps 1e-8): a node that lost all
    # its edges has y = 0 and weight 0, with a finite gradient.
    x = losses.cosine_similarity(y, ego)[:, None] * y
    layers.append(x)
  return sum(layers)


def forward(model: LayerGCN, adj: sparse.Csr,
            hp: Hparams) -> tuple[jax.Array, jax.Array]:
  """(users, items) on the graph `adj` (the epoch's pruned one or the full)."""
  users = model.user_emb[...]
  ego = jnp.concatenate([users, model.item_emb[...]], axis=0)
  out = layer_refined_propagate(adj, ego, hp.n_layers, hp.spmm_kernel)
  n_users = users.shape[0]
  return out[:n_users], out[n_users:]


def edge_log_weights(adj: sparse.Csr, n_users: int,
                     epoch: jax.Array) -> jax.Array:
  """log of this epoch's sampling weights over the stored user-half entries.

  Even epochs: MMRec's `edge_values`, 1/sqrt((d_u+1e-7)(d_i+1e-7)) of the
  full graph (the user half of `full_graph`); odd epochs: equal weights.
  Repeated entries get weight 0 (log -inf) either way.
  """
  half = adj.nnz // 2
  distinct = pruning.distinct_edges(adj)
  degree_sensitive = jnp.log(full_graph(adj, n_users).values[:half])
  uniform = jnp.where(distinct > 0, 0.0, -jnp.inf).astype(adj.values.dtype)
  return jnp.where(epoch % 2 == 0, degree_sensitive, uniform)


def epoch_setup(ctx: family.EpochContext, params: Any, opt_state: Any,
                key: jax.Array) -> family.EpochStart:
  """MMRec's `pre_epoch_processing`: this epoch's training graph as `aux`."""
  hp, adj = ctx.hp, ctx.data.adj
  n_users = ctx.data.train_indptr.shape[0] - 1
  if hp.dropout <= 0.0:  # MMRec: masked_adj = norm_adj_matrix.
    return family.EpochStart(params, opt_state, aux=full_graph(adj, n_users))
  if ctx.epoch is None:
    raise ValueError('LayerGCN alternates its edge sampler by epoch: the '
                     'epoch context must carry the epoch index.')
  n_keep = int(ctx.model(params).n_edges * (1.0 - hp.dropout))
  keep = pruning.sample_edges(edge_log_weights(adj, n_users, ctx.epoch),
                              n_keep, key)
  return family.EpochStart(params, opt_state,
                           aux=pruning.renormalize(adj, n_users, keep))


def loss(model: LayerGCN, data: data_lib.DeviceData, batch: data_lib.Batches,
         key: jax.Array, hp: Hparams,
         aux: sparse.Csr | None = None) -> family.LossOutput:
  """Sum-form BPR + ego L2 on the epoch's graph `aux` (the full one if None)."""
  del key
  n_users = data.train_indptr.shape[0] - 1
  adj = full_graph(data.adj, n_users) if aux is None else aux
  users, items = forward(model, adj, hp)
  u = users[batch.users]
  pos = jnp.sum(u * items[batch.pos_items], axis=-1)
  neg = jnp.sum(u * items[batch.neg_items], axis=-1)
  # Padding rows of the last batch have mask 0; MMRec's is just shorter.
  mask = batch.mask
  ego = (model.user_emb[...][batch.users],
         model.item_emb[...][batch.pos_items],
         model.item_emb[...][batch.neg_items])
  l2 = sum(0.5 * jnp.sum(jnp.sum(x * x, axis=-1) * mask) for x in ego)
  parts = {
      'bpr': jnp.sum(-jax.nn.log_sigmoid(pos - neg) * mask),
      'reg': hp.reg_weight * l2,
  }
  return sum(parts.values()), (parts, (users, items))


def score(model: LayerGCN, data: data_lib.DeviceData,
          hp: Hparams) -> tuple[jax.Array, jax.Array]:
  """A fresh forward on the full graph (`full_sort_predict`)."""
  n_users = data.train_indptr.shape[0] - 1
  return forward(model, full_graph(data.adj, n_users), hp)


def create_model(config: Any, dataset: data_lib.Dataset) -> LayerGCN:
  a = dataset.arrays
  if not pruning.has_bipartite_layout(a['adj_indptr'], a['adj_indices'],
                                      dataset.n_users):
    raise ValueError(f'{dataset.path}: adj is not a bipartite graph with '
                     'user rows first; LayerGCN edge pruning needs that '
                     'layout.')
  n_edges = distinct_pair_count(a['train_indptr'], a['train_items'])
  return LayerGCN(dataset.n_users, dataset.n_items, config.embedding_size,
                  n_edges, rngs=nnx.Rngs(params=config.seed))


LAYERGCN_FAMILY = family.ModelFamily(
    name='layergcn', display_name='LayerGCN', hparams=Hparams,
    item_features=False,
    create_model=create_model, loss=loss, score=score,
    epoch_setup=epoch_setup,
    sweepable=frozenset({'reg_weight'}),
    table_params=('user_emb', 'item_emb'),
    report_keys=('n_layers', 'dropout'),
    # LayerGCN.yaml: embedding_size 64 and its grid, in the order of its
    # hyper_parameters; the defaults are the grid's first cell.
    defaults={'embedding_size': 64,
              'grid': {'n_layers': (4,),
                       'dropout': (0.0, 0.1, 0.2),
                       'reg_weight': (1e-2, 1e-3, 1e-4, 1e-5)}},
    config_spec=family.spec_from_hparams(
        Hparams, embedding_size=spec.integer(1),
        reg_weight=spec.NON_NEGATIVE, n_layers=spec.integer(1),
        dropout=spec.PROBABILITY_BELOW_1))
