"""BM3 (Zhou et al., WWW 2023) as in MMRec's src/models/bm3.py.

* Embeddings: LightGCN's layer mean over n_layers on the user-item graph
  (the stored Â); items add their layer-0 ID row: h_i = mean_l(...) + e_i.
* Modalities: trainable copies of the raw features, each projected to d
  by a linear map (`feat_embed_dim` is not read: MMRec sets it to
  embedding_size).
* One shared predictor f_p (linear d -> d) gives the online views; the
  targets are the embeddings themselves under dropout, without gradient.
  MMRec applies F.dropout to whole tables and gathers the batch's rows, so
  a row's mask depends on its id: here the mask of row i is drawn from
  fold_in(key, i), which gives repeated ids in a batch the same mask as
  there, without drawing masks for every row of the table.
* Loss (no negatives: MMRec sets use_neg_sampling False; the shared
  trainer still draws them, and they are ignored), with C(a, b) = 1 - the
  batch mean of cos(a, b):
    C(f_p u, sg i~) + C(f_p i, sg u~)
    + reg_weight * (||h_U||_F + ||h_I||_F) / n_items     (all rows!)
    + cl_weight * (C(f_p t, sg i~) + C(f_p t, sg t~) + the same for v),
  with u, i the batch's rows of the embeddings, x~ = dropout(x) and t, v
  the projected features of the batch's items.
* Score: <f_p h_u, f_p h_i>.
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
from mentor_jax.ops import graph
from mentor_jax.ops import init as init_lib
from mentor_jax.ops import losses


@dataclasses.dataclass(frozen=True)
class Hparams(family.TrainHparams):
  n_layers: int = 1
  reg_weight: float = 0.1
  dropout: float = 0.3
  cl_weight: float = 2.0
  spmm_kernel: str = 'csr'


def _linear(key: jax.Array, d_in: int, d_out: int
            ) -> tuple[jax.Array, jax.Array]:
  """nn.Linear followed by xavier_normal_ on the weight (bias as torch's)."""
  kw, kb = jax.random.split(key)
  _, b = init_lib.torch_linear_init(kb, d_in, d_out)
  return init_lib.xavier_normal(kw, (d_in, d_out)), b


class BM3(nnx.Module):
  """ID tables, trainable raw features, their projections, the predictor."""

  def __init__(self, n_users: int, feat_v: np.ndarray, feat_t: np.ndarray,
               dim: int, *, rngs: nnx.Rngs):
    n_items = feat_v.shape[0]
    self.user_emb = nnx.Param(init_lib.xavier_uniform(rngs.params(),
                                                    (n_users, dim)))
    self.item_emb = nnx.Param(init_lib.xavier_uniform(rngs.params(),
                                                    (n_items, dim)))
    w, b = _linear(rngs.params(), dim, dim)
    self.pred_w, self.pred_b = nnx.Param(w), nnx.Param(b)
    self.feat_v = nnx.Param(jnp.asarray(feat_v, jnp.float32))
    self.feat_t = nnx.Param(jnp.asarray(feat_t, jnp.float32))
    w, b = _linear(rngs.params(), feat_v.shape[1], dim)
    self.proj_v_w, self.proj_v_b = nnx.Param(w), nnx.Param(b)
    w, b = _linear(rngs.params(), feat_t.shape[1], dim)
    self.proj_t_w, self.proj_t_b = nnx.Param(w), nnx.Param(b)


def forward(model: BM3, data: data_lib.DeviceData,
            hp: Hparams) -> tuple[jax.Array, jax.Array]:
  """(h_U, h_I): layer-mean propagation, items plus their ID rows."""
  users, items = model.user_emb[...], model.item_emb[...]
  ego = jnp.concatenate([users, items], axis=0)
  out = graph.layer_mean_propagate(data.adj, ego, hp.n_layers, hp.spmm_kernel)
  n_users = users.shape[0]
  return out[:n_users], out[n_users:] + items


def predict(model: BM3, x: jax.Array) -> jax.Array:
  return x @ model.pred_w[...] + model.pred_b[...]


def dropout_rows(key: jax.Array, x: jax.Array, ids: jax.Array,
                 rate: float) -> jax.Array:
  """F.dropout(table, rate)[ids] from the gathered rows x = table[ids].

  Row i's mask comes from fold_in(key, i): the same for every occurrence
  of i, independent across ids, as one mask over the whole table would be.
  """
  if not family.is_on(rate):  # rate 0: no dropout (a static branch)
    return x
  keep = jax.vmap(lambda i: jax.random.bernoulli(
      jax.random.fold_in(key, i), 1.0 - rate, x.shape[1:]))(ids)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


def cosine_loss(online: jax.Array, target: jax.Array,
                mask: jax.Array) -> jax.Array:
  """1 - batch mean of cos(online, sg(target)) over the real rows."""
  cos = losses.cosine_similarity(online, jax.lax.stop_gradient(target))
  return 1.0 - losses.masked_mean(cos, mask)


def frobenius(x: jax.Array) -> jax.Array:
  """torch.norm(x, p=2) of a matrix, with a finite gradient at 0."""
  sq = jnp.sum(x * x)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def loss(model: BM3, data: data_lib.DeviceData, batch: data_lib.Batches,
         key: jax.Array, hp: Hparams,
         aux: Any = None) -> family.LossOutput:
  del aux
  users, items = forward(model, data, hp)
  u_ids, i_ids, mask = batch.users, batch.pos_items, batch.mask
  u, i = users[u_ids], items[i_ids]
  # Only the batch's items are projected: the values MMRec gets by
  # projecting every item and gathering.
  t = model.feat_t[...][i_ids] @ model.proj_t_w[...] + model.proj_t_b[...]
  v = model.feat_v[...][i_ids] @ model.proj_v_w[...] + model.proj_v_b[...]
  k_u, k_i, k_t, k_v = jax.random.split(key, 4)
  u_target = dropout_rows(k_u, u, u_ids, hp.dropout)
  i_target = dropout_rows(k_i, i, i_ids, hp.dropout)
  t_target = dropout_rows(k_t, t, i_ids, hp.dropout)
  v_target = dropout_rows(k_v, v, i_ids, hp.dropout)
  t_online, v_online = predict(model, t), predict(model, v)
  parts = {
      'rec': (cosine_loss(predict(model, u), i_target, mask)
              + cosine_loss(predict(model, i), u_target, mask)),
      'reg': hp.reg_weight * (frobenius(users) + frobenius(items))
             / items.shape[0],
      'cl': hp.cl_weight * (cosine_loss(t_online, i_target, mask)
                            + cosine_loss(t_online, t_target, mask)
                            + cosine_loss(v_online, i_target, mask)
                            + cosine_loss(v_online, v_target, mask)),
  }
  return sum(parts.values()), (parts, (predict(model, users),
                                       predict(model, items)))


def score(model: BM3, data: data_lib.DeviceData,
          hp: Hparams) -> tuple[jax.Array, jax.Array]:
  users, items = forward(model, data, hp)
  return predict(model, users), predict(model, items)


def create_model(config: Any, dataset: data_lib.Dataset) -> BM3:
  return BM3(dataset.n_users, dataset.arrays['feat_v'],
             dataset.arrays['feat_t'], config.embedding_size,
             rngs=nnx.Rngs(params=config.seed))


BM3_FAMILY = family.ModelFamily(
    name='bm3', display_name='BM3', hparams=Hparams,
    create_model=create_model, loss=loss, score=score,
    sweepable=frozenset({'reg_weight', 'cl_weight', 'dropout'}),
    gated=frozenset({'dropout'}),
    table_params=('user_emb', 'item_emb', 'feat_v', 'feat_t'),
    report_keys=('n_layers', 'dropout', 'cl_weight'),
    # BM3.yaml's grid (cl_weight 2.0 fixed); the default is its first cell.
    defaults={'embedding_size': 64,
              'grid': {'n_layers': (1, 2), 'reg_weight': (0.1, 0.01),
                       'dropout': (0.3, 0.5)}},
    config_spec=family.spec_from_hparams(
        Hparams, embedding_size=spec.integer(1), n_layers=spec.integer(0),
        reg_weight=spec.NON_NEGATIVE, dropout=spec.PROBABILITY_BELOW_1,
        cl_weight=spec.NON_NEGATIVE))
