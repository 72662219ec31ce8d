"""DiffMM as MRLib's port runs it (src/models/diffmm.py): no diffusion.

What MENTOR's author's library trains under the name DiffMM, beside the
published algorithm (`diffmm`, from the official code). MRLib builds the
denoisers and the Gaussian diffusion but never trains or calls them; its
`forward()` is always called without rebuilt graphs, so the model is a
two-tower multimodal LightGCN on the plain normalized graph Â (no
self-loops; MRLib adds 1e-7 to the degrees, which moves the stored Â's
values by < 1e-7 relative):

* X_m = Â[E_u; n(f_m)] + Â[(Â[E_u; n(f_m)])_users; E_i] + 0.2 Â[E_u; E_i],
  f_m = Linear(F_m -> d) (xavier weight, nn.Linear's default bias);
* M = w_0 X_v + w_1 X_t, w = softmax(modal_weight), modal_weight = [.5, .5]
  trainable;
* out = sum_{l=0..L} Â^l M + 0.1 n(M);
* loss: -mean ln(sigma(pos - neg) + 1e-10) + reg_weight * 1/2 (|u|^2 +
  |p|^2 + |n|^2) / B on the batch's final rows. No contrastive term.

Left out because they do nothing in MRLib: the denoisers and the diffusion
(never trained or called; they would only fill the optimizer), the yaml's
`dropout` grid, `feat_embed_dim`, `aggr_mode`, `batch_size`, `num_epoch`.
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
from mentor_jax.ops import sparse

RIS_ADJ_LAMBDA = 0.2  # MRLib's constants, not config keys.
RIS_LAMBDA = 0.1


@dataclasses.dataclass(frozen=True)
class Hparams(family.TrainHparams):
  reg_weight: float = 1e-4  # the first cell of MRLib's DiffMM.yaml grid
  n_layers: int = 1
  spmm_kernel: str = 'csr'


class DiffMMMRLib(nnx.Module):
  """uEmbeds, iEmbeds (xavier), image/text Linear, modal_weight."""

  def __init__(self, n_users: int, n_items: int, dim_v: int, dim_t: int,
               dim: int, *, rngs: nnx.Rngs):
    self.user_emb = nnx.Param(init_lib.xavier_uniform(rngs.params(),
                                                      (n_users, dim)))
    self.item_emb = nnx.Param(init_lib.xavier_uniform(rngs.params(),
                                                      (n_items, dim)))
    for m, f in (('v', dim_v), ('t', dim_t)):
      # nn.Linear, then xavier_uniform_ on its weight only.
      _, b = init_lib.torch_linear_init(rngs.params(), f, dim)
      setattr(self, f'trans_{m}_w', nnx.Param(
          init_lib.xavier_uniform(rngs.params(), (f, dim))))
      setattr(self, f'trans_{m}_b', nnx.Param(b))
    self.modal_weight = nnx.Param(jnp.full((2,), 0.5, jnp.float32))


def forward(model: DiffMMMRLib, data: data_lib.DeviceData,
            hp: Hparams) -> tuple[jax.Array, jax.Array]:
  """MRLib's `forward()` (the branch without rebuilt graphs)."""
  spmm = lambda x: sparse.spmm(data.adj, x, kernel=hp.spmm_kernel)
  users, items = model.user_emb[...], model.item_emb[...]
  n_users = users.shape[0]
  weight = jax.nn.softmax(model.modal_weight[...])
  from_graph = spmm(jnp.concatenate([users, items]))
  modal = 0.0
  for k, (m, raw) in enumerate((('v', data.feat_v), ('t', data.feat_t))):
    f = raw @ getattr(model, f'trans_{m}_w')[...] + getattr(
        model, f'trans_{m}_b')[...]
    x = spmm(jnp.concatenate([users, losses.l2_normalize(f)]))
    x = x + spmm(jnp.concatenate([x[:n_users], items]))
    modal = modal + weight[k] * (x + RIS_ADJ_LAMBDA * from_graph)
  total, x = modal, modal
  for _ in range(hp.n_layers):
    x = spmm(x)
    total = total + x
  out = total + RIS_LAMBDA * losses.l2_normalize(modal)
  return out[:n_users], out[n_users:]


def loss(model: DiffMMMRLib, data: data_lib.DeviceData,
         batch: data_lib.Batches, key: jax.Array, hp: Hparams,
         aux: Any = None) -> family.LossOutput:
  del key, aux
  users, items = forward(model, data, hp)
  u, p, n = (users[batch.users], items[batch.pos_items],
             items[batch.neg_items])
  mask = batch.mask
  sq = sum(jnp.sum(mask * jnp.sum(x * x, -1)) for x in (u, p, n))
  parts = {
      'bpr': losses.mmrec_bpr_loss(jnp.sum(u * p, -1), jnp.sum(u * n, -1),
                                   mask),
      'reg': hp.reg_weight * 0.5 * sq / jnp.maximum(jnp.sum(mask), 1.0),
  }
  return sum(parts.values()), (parts, (users, items))


def score(model: DiffMMMRLib, data: data_lib.DeviceData,
          hp: Hparams) -> tuple[jax.Array, jax.Array]:
  return forward(model, data, hp)


def create_model(config: Any, dataset: data_lib.Dataset) -> DiffMMMRLib:
  return DiffMMMRLib(dataset.n_users, dataset.n_items, dataset.dim_v,
                     dataset.dim_t, config.embedding_size,
                     rngs=nnx.Rngs(params=config.seed))


DIFFMM_MRLIB_FAMILY = family.ModelFamily(
    name='diffmm_mrlib', display_name='DiffMM (MRLib)', hparams=Hparams,
    create_model=create_model, loss=loss, score=score,
    sweepable=frozenset({'reg_weight'}),
    table_params=('user_emb', 'item_emb'), report_keys=('n_layers',),
    # MRLib's DiffMM.yaml: reg_weight x dropout (a no-op, left out) x
    # n_layers; MRLib's trainer: lr 1e-3, batch 2048 (the trainer's).
    defaults={'embedding_size': 64,
              'grid': {'reg_weight': (1e-4, 1e-3, 1e-2, 0.1),
                       'n_layers': (1, 2, 3)}},
    config_spec=family.spec_from_hparams(
        Hparams, embedding_size=spec.integer(1),
        reg_weight=spec.NON_NEGATIVE, n_layers=spec.integer(0)))
