"""LightGCN (He et al., SIGIR 2020) as in MMRec's src/models/lightgcn.py.

Embeddings: mean over layers 0..L of Â^l E on the normalized user-item graph
(the stored `adj`, the same Â MENTOR uses). Loss: BPRLoss on the propagated
embeddings + reg_weight * EmbLoss on the layer-0 (ego) rows of the batch.
Init: xavier-uniform on both tables.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mentor_jax import config_spec as spec
from mentor_jax import data as data_lib
from mentor_jax import family
from mentor_jax.ops import graph
from mentor_jax.ops import init as init_lib
from mentor_jax.ops import losses


@dataclasses.dataclass(frozen=True)
class Hparams(family.TrainHparams):
  reg_weight: float = 1e-4
  n_layers: int = 3
  spmm_kernel: str = 'csr'


class LightGCN(nnx.Module):
  """Ego embeddings [U, d] and [I, d]."""

  def __init__(self, n_users: int, n_items: int, dim: int, *,
               rngs: nnx.Rngs):
    self.user_emb = nnx.Param(init_lib.xavier_uniform(rngs.params(),
                                                    (n_users, dim)))
    self.item_emb = nnx.Param(init_lib.xavier_uniform(rngs.params(),
                                                    (n_items, dim)))


def propagate(model: LightGCN, data: data_lib.DeviceData,
              hp: Hparams) -> tuple[jax.Array, jax.Array]:
  """(users, items) after the layer-mean readout."""
  users = model.user_emb[...]
  ego = jnp.concatenate([users, model.item_emb[...]], axis=0)
  out = graph.layer_mean_propagate(data.adj, ego, hp.n_layers,
                                    hp.spmm_kernel)
  n_users = users.shape[0]
  return out[:n_users], out[n_users:]


def loss(model: LightGCN, data: data_lib.DeviceData, batch: data_lib.Batches,
         key: jax.Array, hp: Hparams,
         aux: Any = None) -> family.LossOutput:
  del key, aux
  users, items = propagate(model, data, hp)
  u = users[batch.users]
  pos = jnp.sum(u * items[batch.pos_items], axis=-1)
  neg = jnp.sum(u * items[batch.neg_items], axis=-1)
  ego = (model.user_emb[...][batch.users],
         model.item_emb[...][batch.pos_items],
         model.item_emb[...][batch.neg_items])
  parts = {
      'bpr': losses.mmrec_bpr_loss(pos, neg, batch.mask),
      'reg': hp.reg_weight * losses.mmrec_emb_loss(ego, batch.mask),
  }
  return sum(parts.values()), (parts, (users, items))


def score(model: LightGCN, data: data_lib.DeviceData,
          hp: Hparams) -> tuple[jax.Array, jax.Array]:
  return propagate(model, data, hp)


def create_model(config: Any, dataset: data_lib.Dataset) -> LightGCN:
  return LightGCN(dataset.n_users, dataset.n_items, config.embedding_size,
                  rngs=nnx.Rngs(params=config.seed))


LIGHTGCN_FAMILY = family.ModelFamily(
    name='lightgcn', display_name='LightGCN', hparams=Hparams,
    item_features=False,
    create_model=create_model, loss=loss, score=score,
    sweepable=frozenset({'reg_weight'}),
    table_params=('user_emb', 'item_emb'), report_keys=('n_layers',),
    # LightGCN.yaml's grid; the default cell (3 layers, 1e-4) is the
    # LightGCN paper's.
    defaults={'embedding_size': 64,
              'grid': {'n_layers': (1, 2, 3, 4),
                       'reg_weight': (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)}},
    config_spec=family.spec_from_hparams(
        Hparams, embedding_size=spec.integer(1),
        reg_weight=spec.NON_NEGATIVE, n_layers=spec.integer(0)))
