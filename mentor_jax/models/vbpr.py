"""VBPR (He & McAuley, AAAI 2016) as in MMRec's src/models/vbpr.py.

* Users: one free table [U, 2d] (xavier-uniform).
* Items: [ID row (d, xavier-uniform) ‖ W [f_t ‖ f_v] + b (d)], where the
  raw text and image features are concatenated (text first) and frozen,
  and the linear map is xavier-normal with a zero bias.
* Score: <user, item> over the 2d columns; no bias terms.
* Loss: MMRec's BPRLoss + reg_weight * EmbLoss(user, pos, neg) on the
  gathered 2d rows (the projected feature half included).
MMRec's `forward(dropout=0.0)` applies F.dropout with p = 0, the identity,
so there is none here.
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
from mentor_jax.ops import init as init_lib
from mentor_jax.ops import losses


@dataclasses.dataclass(frozen=True)
class Hparams(family.TrainHparams):
  reg_weight: float = 1e-3
  # Unused (no graph); the trainer logs it for every family.
  spmm_kernel: str = 'csr'


class VBPR(nnx.Module):
  """User table [U, 2d], item ID table [I, d], the feature map W, b."""

  def __init__(self, n_users: int, n_items: int, feat_dim: int, dim: int, *,
               rngs: nnx.Rngs):
    self.user_emb = nnx.Param(init_lib.xavier_uniform(rngs.params(),
                                                    (n_users, 2 * dim)))
    self.item_emb = nnx.Param(init_lib.xavier_uniform(rngs.params(),
                                                    (n_items, dim)))
    # torch's weight is [d, feat_dim]; xavier's std is symmetric in the fans.
    self.proj_w = nnx.Param(init_lib.xavier_normal(rngs.params(),
                                                   (feat_dim, dim)))
    self.proj_b = nnx.Param(jnp.zeros((dim,), jnp.float32))


def item_features(data: data_lib.DeviceData) -> jax.Array:
  """MMRec's item_raw_features: [f_t ‖ f_v], text first."""
  return jnp.concatenate([data.feat_t, data.feat_v], axis=-1)


def item_rows(item_emb: jax.Array, proj_w: jax.Array, proj_b: jax.Array,
              feats: jax.Array) -> jax.Array:
  """[ID row ‖ feats W + b], [I, 2d]."""
  return jnp.concatenate([item_emb, feats @ proj_w + proj_b], axis=-1)


def loss(model: VBPR, data: data_lib.DeviceData, batch: data_lib.Batches,
         key: jax.Array, hp: Hparams,
         aux: Any = None) -> family.LossOutput:
  del key, aux
  # Every item's row, as MMRec's forward: the trainer may evaluate with
  # this step's embeddings (eval_embeddings='last_step').
  users, items = score(model, data, hp)
  parts = losses.mmrec_bpr_with_emb_reg(
      users, items, batch.users, batch.pos_items, batch.neg_items,
      batch.mask, hp.reg_weight)
  return sum(parts.values()), (parts, (users, items))


def score(model: VBPR, data: data_lib.DeviceData,
          hp: Hparams) -> tuple[jax.Array, jax.Array]:
  del hp
  return model.user_emb[...], item_rows(model.item_emb[...],
                                        model.proj_w[...], model.proj_b[...],
                                        item_features(data))


def create_model(config: Any, dataset: data_lib.Dataset) -> VBPR:
  a = dataset.arrays
  feat_dim = a['feat_t'].shape[1] + a['feat_v'].shape[1]
  return VBPR(dataset.n_users, dataset.n_items, feat_dim,
              config.embedding_size, rngs=nnx.Rngs(params=config.seed))


VBPR_FAMILY = family.ModelFamily(
    name='vbpr', display_name='VBPR', hparams=Hparams,
    create_model=create_model, loss=loss, score=score,
    sweepable=frozenset({'reg_weight'}),
    table_params=('user_emb', 'item_emb'),
    # VBPR.yaml's grid (as BPR.yaml's, with the same loss form).
    defaults={'embedding_size': 64,
              'grid': {'reg_weight': (2.0, 1.0, 0.1, 1e-2, 1e-3, 1e-4,
                                      1e-5)}},
    config_spec=family.spec_from_hparams(
        Hparams, embedding_size=spec.integer(1),
        reg_weight=spec.NON_NEGATIVE))
