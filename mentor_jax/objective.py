"""MENTOR's training objective (MENTOR_SPEC §2.6) and its `ModelFamily`.

`Hparams` is the static, hashable set of settings that shape the compiled
step; `mentor_loss` composes the pure losses of `losses.py` on the outputs of
`model.forward`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mentor_jax import data as data_lib
from mentor_jax import family
from mentor_jax import losses
from mentor_jax import model as model_lib


@dataclasses.dataclass(frozen=True)
class Hparams(family.TrainHparams):
  """Static settings of MENTOR's compiled train step (hashable for jit)."""

  reg_weight: float = 1e-3
  align_weight: float = 0.1
  mask_weight_f: float = 1.5
  dropout: float = 0.5
  mask_weight_g: float = 1e-4
  temp: float = 0.2
  n_ui_layers: int = 2
  n_mm_layers: int = 1
  mm_image_weight: float = 0.1
  noise_eps: float = 0.1
  spmm_kernel: str = 'csr'
  infonce_impl: str = 'fused'
  infonce_block_size: int = 1024


def run_forward(model: model_lib.Mentor, data: data_lib.DeviceData,
                key: jax.Array | None, hp: Hparams) -> model_lib.Embeddings:
  return model_lib.forward(
      model, data.feat_v, data.feat_t, data.adj, data.knn_v, data.knn_t, key,
      mm_image_weight=hp.mm_image_weight, n_mm_layers=hp.n_mm_layers,
      n_ui_layers=hp.n_ui_layers, noise_eps=hp.noise_eps,
      kernel=hp.spmm_kernel)


def _stack(u: jax.Array, i: jax.Array) -> jax.Array:
  return jnp.concatenate([u, i], axis=0)


def mentor_loss(model: model_lib.Mentor, data: data_lib.DeviceData,
                batch: data_lib.Batches, key: jax.Array, hp: Hparams
                ) -> tuple[jax.Array, tuple[dict[str, jax.Array],
                                            tuple[jax.Array, jax.Array]]]:
  """Total loss of one batch.

  Returns:
    (total, (parts, (R^u, R^i))): the loss parts as logged (each already
    multiplied by its weight) and the fused embeddings used for scoring.
  """
  noise_key, drop_key = jax.random.split(key)
  emb = run_forward(model, data, noise_key, hp)
  v = model_lib.build_views(emb)
  u, p, n, mask = batch.users, batch.pos_items, batch.neg_items, batch.mask

  user = v.fused_u[u]
  pos = jnp.sum(user * v.fused_i[p], axis=-1)
  neg = jnp.sum(user * v.fused_i[n], axis=-1)
  bpr = losses.bpr_loss(pos, neg, mask)

  reg = losses.l2_reg(model.encoders['v'].preference[...][u],
                      model.encoders['t'].preference[...][u],
                      emb.weight_u, hp.reg_weight, mask)

  align = hp.align_weight * losses.align_loss(
      _stack(v.fused_u, v.fused_i), _stack(v.ident_u, v.ident_i),
      _stack(v.visual_u, v.visual_i), _stack(v.textual_u, v.textual_i))

  # Feature masking: computed under no_grad upstream, so it is logged with
  # zero gradient (MENTOR_SPEC §2.4).
  fu, fi = jax.lax.stop_gradient((v.fused_u, v.fused_i))
  keep = 1.0 - hp.dropout
  ku, ki = jax.random.split(drop_key)
  drop = lambda k, x: jnp.where(jax.random.bernoulli(k, keep, x.shape),
                                x / keep, 0.0)
  mlp = lambda x: x @ model.mask_w[...] + model.mask_b[...]
  mask_f = hp.mask_weight_f * jax.lax.stop_gradient(
      losses.feature_mask_loss(fu, fi, drop(ku, fu), drop(ki, fi),
                               jax.lax.stop_gradient(mlp(fu)),
                               jax.lax.stop_gradient(mlp(fi))))

  parts = {'bpr': bpr, 'reg': reg, 'align': align, 'mask_f': mask_f}
  if model.perturbed and hp.mask_weight_g:
    (n1u, n1i), (n2u, n2i) = model_lib.noise_views(emb)
    nce = lambda a, b: losses.info_nce_loss(
        a, b, hp.temp, impl=hp.infonce_impl, block_size=hp.infonce_block_size)
    parts['nce_g'] = hp.mask_weight_g * (nce(n1u, n2u) + nce(n1i, n2i))
  total = sum(parts.values())
  return total, (parts, (v.fused_u, v.fused_i))


def score_embeddings(model: model_lib.Mentor, data: data_lib.DeviceData,
                     hp: Hparams) -> tuple[jax.Array, jax.Array]:
  """(R^u, R^i) from a clean forward pass (no noise is used by R)."""
  emb = run_forward(model, data, jax.random.PRNGKey(0), hp)
  v = model_lib.build_views(emb)
  return v.fused_u, v.fused_i


def create_model(config: Any, dataset: data_lib.Dataset) -> model_lib.Mentor:
  return model_lib.Mentor(
      dataset.n_users, dataset.n_items,
      dataset.arrays['feat_v'].shape[1], dataset.arrays['feat_t'].shape[1],
      perturbed=bool(config.mask_weight_g),
      rngs=nnx.Rngs(params=config.seed))


MENTOR = family.ModelFamily(
    name='mentor', create_model=create_model,
    make_hparams=Hparams.from_config, loss=mentor_loss,
    score=score_embeddings)
