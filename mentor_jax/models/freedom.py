"""FREEDOM (Zhou & Shen, MM 2023) as in MMRec's src/models/freedom.py.

* Item-item graph: frozen, built once from the raw features,
  S = w S_v + (1 - w) S_t with 1/k per kNN entry (self included); the
  stored `knn_v`/`knn_t` lists give exactly this operator, applied as
  MENTOR applies it (`model.item_graph`: a device-built CSR and `spmm`).
* Embeddings: users and items are LightGCN's layer mean over n_ui_layers on
  the user-item graph; items add h = S^{n_mm_layers} E_item.
* Training graph: degree-sensitive edge pruning once per epoch
  (`pre_epoch_processing`): keep (1 - dropout) of the interactions, sampled
  without replacement with probability ~ 1/sqrt(d_u d_i), and
  re-normalize with the kept degrees. Evaluation uses the full graph.
* Loss: ln-BPR on the fused embeddings + reg_weight * (BPR of the users
  against the projected text features + the same for the image features).
  The raw feature tables are trainable (`from_pretrained(freeze=False)`).
  `lambda_coeff` is read by MMRec but never used, so it is absent here.
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
from mentor_jax.ops import pruning
from mentor_jax.ops import sparse


@dataclasses.dataclass(frozen=True)
class Hparams(family.TrainHparams):
  reg_weight: float = 1e-3
  dropout: float = 0.8
  n_ui_layers: int = 2
  n_mm_layers: int = 1
  mm_image_weight: float = 0.1
  spmm_kernel: str = 'csr'


class Freedom(nnx.Module):
  """ID tables, trainable copies of the raw features, two projections."""

  def __init__(self, n_users: int, feat_v: np.ndarray, feat_t: np.ndarray,
               dim: int, feat_dim: int, *, rngs: nnx.Rngs):
    for name, value in init_lib.feature_model_tables(
        rngs.params, n_users, feat_v, feat_t, dim, feat_dim).items():
      setattr(self, name, nnx.Param(value))


def forward(model: Freedom, data: data_lib.DeviceData, adj: sparse.Csr,
            hp: Hparams) -> tuple[jax.Array, jax.Array]:
  """(users, items) on the user-item graph `adj` (pruned or full)."""
  items = model.item_emb[...]
  h = graph.item_graph(items, data.knn_v, data.knn_t,
                           image_weight=hp.mm_image_weight,
                           n_layers=hp.n_mm_layers, kernel=hp.spmm_kernel)
  users = model.user_emb[...]
  ego = jnp.concatenate([users, items], axis=0)
  out = graph.layer_mean_propagate(adj, ego, hp.n_ui_layers, hp.spmm_kernel)
  n_users = users.shape[0]
  return out[:n_users], out[n_users:] + h


# The pruning itself is shared with LayerGCN (ops/pruning.py); the name
# stays importable from here.
prune_adj = pruning.prune_adj


def epoch_setup(ctx: family.EpochContext, params: Any, opt_state: Any,
                key: jax.Array) -> family.EpochStart:
  """MMRec's `pre_epoch_processing`: this epoch's pruned graph as `aux`."""
  hp, adj = ctx.hp, ctx.data.adj
  if hp.dropout > 0.0:  # MMRec trains on the full graph otherwise.
    n_users = ctx.data.train_indptr.shape[0] - 1
    adj = prune_adj(adj, n_users, key, hp.dropout)
  return family.EpochStart(params, opt_state, aux=adj)


def loss(model: Freedom, data: data_lib.DeviceData, batch: data_lib.Batches,
         key: jax.Array, hp: Hparams,
         aux: sparse.Csr | None = None) -> family.LossOutput:
  """The loss on the epoch's pruned graph `aux` (the full one if None)."""
  del key
  users, items = forward(model, data, data.adj if aux is None else aux, hp)
  u = users[batch.users]
  p, n, mask = batch.pos_items, batch.neg_items, batch.mask

  def bpr(item_p, item_n):
    return losses.bpr_loss(jnp.sum(u * item_p, -1), jnp.sum(u * item_n, -1),
                           mask, log_base=math.e)

  # Only the batch's rows are projected: the same values as projecting all
  # items and gathering, as MMRec does, at a fraction of the cost.
  proj_t = lambda i: model.feat_t[...][i] @ model.proj_t_w[...] + (
      model.proj_t_b[...])
  proj_v = lambda i: model.feat_v[...][i] @ model.proj_v_w[...] + (
      model.proj_v_b[...])
  parts = {
      'bpr': bpr(items[p], items[n]),
      'reg': hp.reg_weight * (bpr(proj_t(p), proj_t(n))
                              + bpr(proj_v(p), proj_v(n))),
  }
  return sum(parts.values()), (parts, (users, items))


def score(model: Freedom, data: data_lib.DeviceData,
          hp: Hparams) -> tuple[jax.Array, jax.Array]:
  return forward(model, data, data.adj, hp)


def check_adj_layout(dataset: data_lib.Dataset) -> None:
  """Checks the layout `prune_adj` relies on (on the host, once)."""
  a = dataset.arrays
  if not pruning.has_bipartite_layout(a['adj_indptr'], a['adj_indices'],
                                      dataset.n_users):
    raise ValueError(f'{dataset.path}: adj is not a bipartite graph with '
                     'user rows first; FREEDOM edge pruning needs that layout.')


def create_model(config: Any, dataset: data_lib.Dataset) -> Freedom:
  check_adj_layout(dataset)
  return Freedom(dataset.n_users, dataset.arrays['feat_v'],
                 dataset.arrays['feat_t'], config.embedding_size,
                 config.get('feat_embed_dim', config.embedding_size),
                 rngs=nnx.Rngs(params=config.seed))


FREEDOM_FAMILY = family.ModelFamily(
    name='freedom', display_name='FREEDOM', hparams=Hparams,
    create_model=create_model, loss=loss, score=score,
    epoch_setup=epoch_setup,
    sweepable=frozenset({'reg_weight', 'mm_image_weight'}),
    table_params=('user_emb', 'item_emb', 'feat_v', 'feat_t'),
    report_keys=('dropout',),
    # FREEDOM.yaml: knn_k 10 (the trainer's), feat_embed_dim 64 and its
    # grid; the default cell is dropout 0.8, reg_weight 1e-3.
    defaults={'embedding_size': 64, 'feat_embed_dim': 64,
              'grid': {'dropout': (0.8, 0.9),
                       'reg_weight': (0.0, 1e-5, 1e-4, 1e-3)}},
    config_spec=family.spec_from_hparams(
        Hparams, embedding_size=spec.integer(1),
        feat_embed_dim=spec.integer(1), reg_weight=spec.NON_NEGATIVE,
        dropout=spec.PROBABILITY_BELOW_1, n_ui_layers=spec.integer(0),
        n_mm_layers=spec.integer(0), mm_image_weight=spec.number(0.0, 1.0)))
