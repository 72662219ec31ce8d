"""MF-BPR (Rendle et al., UAI 2009) as in MMRec's src/models/bpr.py.

Score = <user row, item row> of two free tables (xavier-normal init).
Loss = BPRLoss(pos, neg) + reg_weight * EmbLoss(user, pos, neg) on the
gathered rows (MMRec's forms, see `common`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
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


class MFBPR(nnx.Module):
  """Two embedding tables, [U, d] and [I, d]."""

  def __init__(self, n_users: int, n_items: int, dim: int, *,
               rngs: nnx.Rngs):
    self.user_emb = nnx.Param(init_lib.xavier_normal(rngs.params(),
                                                   (n_users, dim)))
    self.item_emb = nnx.Param(init_lib.xavier_normal(rngs.params(),
                                                   (n_items, dim)))


def loss(model: MFBPR, data: data_lib.DeviceData, batch: data_lib.Batches,
         key: jax.Array, hp: Hparams,
         aux: Any = None) -> family.LossOutput:
  del data, key, aux
  users, items = model.user_emb[...], model.item_emb[...]
  parts = losses.mmrec_bpr_with_emb_reg(
      users, items, batch.users, batch.pos_items, batch.neg_items,
      batch.mask, hp.reg_weight)
  return sum(parts.values()), (parts, (users, items))


def score(model: MFBPR, data: data_lib.DeviceData,
          hp: Hparams) -> tuple[jax.Array, jax.Array]:
  del data, hp
  return model.user_emb[...], model.item_emb[...]


def create_model(config: Any, dataset: data_lib.Dataset) -> MFBPR:
  return MFBPR(dataset.n_users, dataset.n_items, config.embedding_size,
               rngs=nnx.Rngs(params=config.seed))


MFBPR_FAMILY = family.ModelFamily(
    name='mfbpr', display_name='MF-BPR', hparams=Hparams,
    item_features=False,
    create_model=create_model, loss=loss, score=score,
    sweepable=frozenset({'reg_weight'}),
    table_params=('user_emb', 'item_emb'),
    # BPR.yaml's grid; reg_weight 1e-3 is its default cell here.
    defaults={'embedding_size': 64,
              'grid': {'reg_weight': (2.0, 1.0, 0.1, 1e-2, 1e-3, 1e-4,
                                      1e-5)}},
    config_spec=family.spec_from_hparams(
        Hparams, embedding_size=spec.integer(1),
        reg_weight=spec.NON_NEGATIVE))
