"""MMSSL's training: the generator's loss, the two-optimizer step, the
official sampler, scoring and the `ModelFamily` (model.py's docstring says
what the official code computes)."""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mentor_jax import config_spec as spec
from mentor_jax import data as data_lib
from mentor_jax import family
from mentor_jax.models.mmssl.model import (
    MMSSL, Hparams, disc_loss, disc_params, discriminate, forward, is_disc,
    is_gen, normalize, real_rows, batch_rows, topk_of, user_sim)

# --- the generator's loss ----------------------------------------------------


def grace(z1: jax.Array, z2: jax.Array, tau) -> jax.Array:
  """main.py batched_contrastive_loss (one direction, z1 the anchors)."""
  a, b = normalize(z1), normalize(z2)
  refl = jnp.exp(a @ a.T / tau)
  between = jnp.exp(a @ b.T / tau)
  ratio = jnp.diag(between) / (refl.sum(1) + between.sum(1) - jnp.diag(refl))
  return jnp.mean(-jnp.log(ratio + 1e-8))


def generator_terms(model, data, batch, key, hp):
  """The generator's loss parts, the forward and its image/text rows."""
  out = forward(model, data, hp, jax.random.fold_in(key, 0))
  users = batch.users
  u, p, n = (out['users'][users], out['items'][batch.pos_items],
             out['items'][batch.neg_items])
  bs = users.shape[0]
  r_rows = batch_rows(data, users, hp)
  sims = [user_sim(out[f'{m}_users'][users], out[f'{m}_items'], r_rows)
          for m in ('image', 'text')]
  fake = discriminate(disc_params(model), jnp.concatenate(sims, 0),
                      jax.random.fold_in(key, 1), hp)
  n_items = out['items'].shape[0]
  feat = sum(jnp.sum(out[k] ** 2) for k in (
      'image_items', 'text_items', 'image_users', 'text_users'))
  parts = {
      'bpr': -jnp.mean(jax.nn.log_sigmoid(jnp.sum(u * p, -1)
                                          - jnp.sum(u * n, -1))),
      'reg': hp.reg_weight * 0.5 * (jnp.sum(u ** 2) + jnp.sum(p ** 2)
                                    + jnp.sum(n ** 2)) / bs,
      'feat_reg': hp.feat_reg_decay * 0.5 * feat / n_items,
      'cl': hp.cl_rate * (grace(out['image_user_id'][users], u, hp.tau)
                          + grace(out['text_user_id'][users], u, hp.tau)),
      'adv': -hp.g_rate * jnp.mean(fake),
  }
  return parts, out, sims


def loss(model: MMSSL, data: data_lib.DeviceData, batch: data_lib.Batches,
         key: jax.Array, hp: Hparams, aux: Any = None) -> family.LossOutput:
  """The generator's batch_loss (module docstring)."""
  del aux
  parts, out, _ = generator_terms(model, data, batch, key, hp)
  return sum(parts.values()), (parts, (out['users'], out['items']))


# --- the step ----------------------------------------------------------------


def _optimizers(hp: Hparams) -> dict[str, optax.GradientTransformation]:
  return {
      'disc': optax.masked(optax.adam(hp.d_lr, b1=0.5, b2=0.9, eps=1e-8),
                           is_disc),
      'gen': optax.masked(optax.adamw(hp.learning_rate, b1=0.9, b2=0.999,
                                      eps=1e-8,
                                      weight_decay=hp.weight_decay), is_gen)}


def make_optimizer(hp: Hparams) -> optax.GradientTransformation:
  """Two states, one per group; `train_step` applies each in turn."""
  groups = _optimizers(hp)

  def init(params):
    return {name: tx.init(params) for name, tx in groups.items()}

  def update(grads, state, params=None):
    raise NotImplementedError('mmssl.train_step applies each optimizer')
  return optax.GradientTransformation(init, update)


def _apply(hp, name, grads, opt_state, params):
  updates, inner = _optimizers(hp)[name].update(grads, opt_state[name],
                                                params)
  # optax.masked passes the other leaves' gradients through: drop them.
  mine = is_disc(params) if name == 'disc' else is_gen(params)
  updates = jax.tree.map(lambda u, m: u if m else jnp.zeros_like(u),
                         updates, mine)
  return optax.apply_updates(params, updates), {**opt_state, name: inner}


def disc_inputs(model, data, users, key, hp):
  """main.py's no-grad forward, then (fake, real) for the D step."""
  out = jax.tree.map(jax.lax.stop_gradient,
                     forward(model, data, hp, jax.random.fold_in(key, 0)))
  r_rows = batch_rows(data, users, hp)
  sim = lambda m: user_sim(out[f'{m}users'][users], out[f'{m}items'], r_rows)
  fake = jnp.concatenate([sim('image_'), sim('text_')], 0)
  uniform = jax.random.uniform(jax.random.fold_in(key, 1), r_rows.shape)
  real = real_rows(r_rows, sim(''), uniform, hp)
  return fake, jnp.concatenate([real, real], 0)


def train_step(ctx: family.EpochContext, params, opt_state, batch, key,
               index) -> family.StepOutput:
  """main.py's batch: the D step, the G step, then the graph state."""
  hp, users = ctx.hp, batch.users
  d_key, g_key = jax.random.split(key)
  fake, real = disc_inputs(ctx.model(params), ctx.data, users, d_key, hp)
  alpha = jax.random.uniform(jax.random.fold_in(d_key, 2),
                             (real.shape[0], 1))
  keys = [jax.random.fold_in(d_key, 3 + j) for j in range(3)]
  (d_value, _), grads = jax.value_and_grad(
      lambda p: disc_loss(disc_params(ctx.model(p)), fake, real, alpha, keys,
                          hp), has_aux=True)(params)
  params, opt_state = _apply(hp, 'disc', grads, opt_state, params)

  def g_loss(p):
    parts, out, sims = generator_terms(ctx.model(p), ctx.data, batch, g_key,
                                       hp)
    return sum(parts.values()), (parts, (out['users'], out['items']), sims)

  (_, (parts, scores, sims)), grads = jax.value_and_grad(
      g_loss, has_aux=True)(params)
  params, opt_state = _apply(hp, 'gen', grads, opt_state, params)
  params = update_graph_state(params, users, sims, index, hp)
  return family.StepOutput(params, opt_state,
                           {**parts, 'disc': d_value}, scores)


def update_graph_state(params, users, sims, index, hp):
  """T = 1: batch 0 collects its top-k, every later batch installs the
  collection as A_m and empties it (module docstring)."""
  k = topk_of(sims[0].shape[1], hp)
  top = jnp.stack([jax.lax.top_k(jax.lax.stop_gradient(s), k)[1]
                   for s in sims]).astype(jnp.float32)
  width = params['aug_items'][...].shape[-1]  # max(k, 1)
  top = jnp.pad(top, ((0, 0), (0, 0), (0, width - k)))
  first = index == 0
  users = users.astype(jnp.float32)
  new = {
      'pending_users': jnp.where(first, users, params['pending_users'][...]),
      'pending_items': jnp.where(first, top, params['pending_items'][...]),
      'pending_valid': jnp.where(first, 1.0, 0.0),
      'aug_full': jnp.where(first, params['aug_full'][...], 0.0),
      'aug_valid': jnp.where(first, params['aug_valid'][...],
                             params['pending_valid'][...]),
      'aug_users': jnp.where(first, params['aug_users'][...],
                             params['pending_users'][...]),
      'aug_items': jnp.where(first, params['aug_items'][...],
                             params['pending_items'][...]),
  }
  for name, value in new.items():
    params[name] = params[name].replace(value)
  return params


# --- batches, scoring, the family --------------------------------------------


def epoch_batches(key, data: data_lib.DeviceData, hp: Hparams):
  """load_data.py `sample()`, n_train // B + 1 times: B users without
  replacement among those with training items (with replacement when B >
  U), a uniform positive of each, a negative uniform over all items outside
  the user's training set."""
  indptr = data.train_indptr
  n_users = indptr.shape[0] - 1
  bs = hp.batch_size
  n_steps = data.train_items.shape[0] // bs + 1
  deg = jnp.diff(indptr)

  def one(k):
    ku, kp, kn = jax.random.split(k, 3)
    if bs <= n_users:
      r = jnp.where(deg > 0, jax.random.uniform(ku, (n_users,)), 2.0)
      users = jnp.argsort(r)[:bs]
    else:
      exist = jnp.argsort(deg == 0, stable=True)
      n_exist = jnp.sum(deg > 0)
      users = exist[jnp.floor(jax.random.uniform(ku, (bs,)) * n_exist
                              ).astype(jnp.int32)]
    d = deg[users]
    off = jnp.minimum(jnp.floor(jax.random.uniform(kp, (bs,)) * d), d - 1)
    pos = data.train_items[indptr[users] + off.astype(jnp.int32)]
    neg = data_lib.sample_negatives(kn, users, data, hp.max_row_len,
                                    all_items=True)
    return data_lib.Batches(users.astype(jnp.int32), pos, neg,
                            jnp.ones((bs,), jnp.float32))

  return jax.vmap(one)(jax.random.split(key, n_steps))


def score(model: MMSSL, data: data_lib.DeviceData,
          hp: Hparams) -> tuple[jax.Array, jax.Array]:
  """Trainer.test: an eval-mode forward with the current A_m."""
  out = forward(model, data, hp, None)
  return out['users'], out['items']


def create_model(config: Any, dataset: data_lib.Dataset) -> MMSSL:
  hp = Hparams.from_config(config)
  n_users, n_items = dataset.n_users, dataset.n_items
  if max(n_users, n_items) >= 1 << 24:
    raise ValueError('mmssl keeps ids in float32: at most 2**24 users/items')
  k = topk_of(n_items, hp)
  if k == 0:
    logging.warning(
        'mmssl: m_topk_rate=%g x %d items gives k = int(%g) = 0: the '
        "augmented modality graphs are empty (as in the official code's "
        'default on Baby and TikTok), so the modality ID views are 0 and '
        'the contrastive loss has no gradient.', hp.m_topk_rate, n_items,
        n_items * hp.m_topk_rate)
  a = dataset.arrays
  return MMSSL(n_users, n_items, a['feat_v'], a['feat_t'],
               config.embedding_size, hp.head_num, hp.batch_size, k,
               rngs=nnx.Rngs(params=config.seed))


_SPEC = family.spec_from_hparams(
    Hparams, embedding_size=spec.integer(1), head_num=spec.integer(1),
    n_ui_layers=spec.integer(1), m_topk_rate=spec.NON_NEGATIVE,
    reg_weight=spec.NON_NEGATIVE, cl_rate=spec.NON_NEGATIVE,
    g_rate=spec.NON_NEGATIVE, gp_rate=spec.NON_NEGATIVE)

MMSSL_FAMILY = family.ModelFamily(
    name='mmssl', display_name='MMSSL', hparams=Hparams,
    create_model=create_model, loss=loss, score=score,
    make_optimizer=make_optimizer, epoch_batches=epoch_batches,
    train_step=train_step,
    sweepable=frozenset({'reg_weight', 'feat_reg_decay', 'cl_rate', 'tau',
                         'g_rate', 'gp_rate', 'model_cat_rate',
                         'id_cat_rate'}),
    table_params=('user_emb', 'item_emb'),
    report_keys=('cl_rate', 'g_rate', 'm_topk_rate'),
    # parser.py: lr 5.5e-4, batch 1024, patience 7 (valid Recall@20).
    defaults={'embedding_size': 64, 'learning_rate': 5.5e-4,
              'train_batch_size': 1024, 'stopping_step': 7},
    config_spec=_SPEC)
