"""MRLib's MMSSL port against a numpy float64 reading of MRLib's code.

The references (`_ref_*`) are written from MRLib's src/models/mmssl.py and
share nothing with the port: dense D^-1/2 R graphs built from the training
rows, the `mmlayer` feature loop as written, the multi-head attention block
as written (w_q, w_k, heads, softmax over dim 2, V unsqueezed on dim 1),
the GRACE loss as one dense I x I matrix, and torch's Adam update.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import conftest
from mentor_jax import data as data_lib
from mentor_jax import family
from mentor_jax.models import mmssl_mrlib as mr


def _np(x):
  return np.asarray(x, np.float64)


def _norm(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _softmax(x, axis):
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def _p(model):
  return {k: _np(v) for k, v in
          nnx.to_pure_dict(nnx.state(model, nnx.Param)).items()}


def _R(ds):
  """R from the training rows, as _build_edge_index + coo_matrix build it."""
  r = np.zeros((ds.n_users, ds.n_items))
  np.add.at(r, (ds.arrays['train_user'], ds.arrays['train_item']), 1.0)
  return r


def _ref_attention(beh_q, beh_kv, w_q, w_k, w_cat, heads=4):
  """multi_head_self_attention as written; returns 0.55 n(Z) [beh, N, d]."""
  q, k = np.stack(beh_q), np.stack(beh_kv)
  v = k
  beh, n, d = q.shape
  dh = d // heads
  big_q = (q @ w_q).reshape(beh, n, heads, dh).transpose(2, 0, 1, 3)
  big_k = (k @ w_k).reshape(beh, n, heads, dh).transpose(2, 0, 1, 3)
  att = np.sum(big_q[:, :, None] * big_k[:, None], -1) / np.sqrt(dh)
  att = _softmax(att[..., None], axis=2)       # [H, beh, beh, N, 1]
  z = np.sum(att * v[:, None], axis=2)         # V unsqueezed on dim 1
  z = np.concatenate(list(z), -1) @ w_cat      # heads concatenated
  return 0.55 * _norm(z)


def _ref_forward(p, ds, mmlayer, rng):
  r = _R(ds)
  g_ui = np.diag((r.sum(1) + 1e-8) ** -0.5) @ r
  g_iu = np.diag((r.T.sum(1) + 1e-8) ** -0.5) @ r.T
  eu, ei = p['user_emb'], p['item_emb']
  feats = {}
  for name, raw in (('image', ds.arrays['feat_v']),
                    ('text', ds.arrays['feat_t'])):
    f = _np(raw) @ p[f'{name}_w'] + p[f'{name}_b']
    feats[name] = f @ p['common_w'] + p['common_b']
  out = {}
  for _ in range(mmlayer):  # the loop as written: recomputes each time
    for name in ('image', 'text'):
      out[f'{name}_users'] = g_ui @ feats[name]
      out[f'{name}_items'] = g_iu @ out[f'{name}_users']
      out[f'{name}_user_id'] = g_ui @ ei
      out[f'{name}_item_id'] = g_iu @ eu
  # w_q / w_k are not ported: any values give the same output.
  w_q, w_k = rng.normal(size=(2, eu.shape[1], eu.shape[1]))
  user_z = _ref_attention([out['image_user_id'], out['text_user_id']],
                          [out['image_user_id'], out['text_user_id']],
                          w_q, w_k, p['attn_cat'])
  item_z = _ref_attention([out['image_item_id'], out['text_item_id']],
                          [out['image_item_id'], out['text_item_id']],
                          w_q, w_k, p['attn_cat'])
  u = eu + 0.36 * _norm(user_z.mean(0))
  i = ei + 0.36 * _norm(item_z.mean(0))
  us, its = [u], [i]
  for layer in range(mmlayer):
    if layer == mmlayer - 1:
      u = _softmax(g_ui @ i, -1)
      i = _softmax(g_iu @ u, -1)
    else:
      u = g_ui @ i
      i = g_iu @ u
    us.append(u)
    its.append(i)
  out['users'] = (np.mean(us, 0) + 0.55 * _norm(out['image_users'])
                  + 0.55 * _norm(out['text_users']))
  out['items'] = (np.mean(its, 0) + 0.55 * _norm(out['image_items'])
                  + 0.55 * _norm(out['text_items']))
  return out


def _ref_grace(z1, z2, tau):
  """batched_contrastive_loss's value: one dense I x I matrix."""
  a, b = _norm(z1), _norm(z2)
  refl, between = np.exp(a @ a.T / tau), np.exp(a @ b.T / tau)
  loss = -np.log(np.diag(between) / (refl.sum(1) + between.sum(1)
                                     - np.diag(refl)) + 1e-8)
  return loss.mean()


def _ref_parts(p, ds, batch, hp, rng):
  out = _ref_forward(p, ds, hp.mmlayer, rng)
  keep = np.asarray(batch.mask) > 0
  u, pos, neg = (np.asarray(x)[keep] for x in
                 (batch.users, batch.pos_items, batch.neg_items))
  ue, pe, ne = out['users'][u], out['items'][pos], out['items'][neg]
  diff = (ue * pe).sum(1) - (ue * ne).sum(1)
  iv, it = out['image_items'], out['text_items']
  return {
      'bpr': -np.mean(np.log(1 / (1 + np.exp(-diff)) + 1e-10)),
      'reg': hp.reg_weight * 0.5 * ((ue ** 2).sum() + (pe ** 2).sum()
                                    + (ne ** 2).sum()) / len(u),
      'cl': hp.ssl_alpha * _ref_grace(iv, it, hp.ssl_temp),
      'feat_reg': 1e-5 * 0.5 * ((iv ** 2).sum() + (it ** 2).sum())
                  / ds.n_items,
  }, out


def _built(tiny_dataset, **kw):
  kw = {'reg_weight': 0.1, 'ssl_alpha': 0.5, 'ssl_temp': 0.4,
        'grace_block_size': 16, **kw}
  return conftest.build_baseline('mmssl_mrlib', tiny_dataset, **kw)


def _batch(ds, rng, n=24, padded=4):
  rows = rng.choice(ds.n_train, n, replace=False)
  mask = np.ones(n, np.float32)
  mask[n - padded:] = 0.0
  return data_lib.Batches(
      jnp.asarray(ds.arrays['train_user'][rows]),
      jnp.asarray(ds.arrays['train_item'][rows]),
      jnp.asarray(rng.integers(0, ds.n_items, n)), jnp.asarray(mask))


def test_attention_as_written_is_v_times_summed_cat_blocks():
  rng = np.random.default_rng(0)
  d, n = 16, 9
  # Two different modality stacks, so that the softmax is not uniform.
  ids = [rng.normal(size=(n, d)), rng.normal(size=(n, d))]
  w_q, w_k = rng.normal(size=(2, d, d))
  w_cat = rng.normal(size=(4 * d, d))
  want = _ref_attention(ids, ids, w_q, w_k, w_cat)
  w_bar = _np(mr.attention_weight(jnp.asarray(w_cat), 4))
  for b in range(2):
    np.testing.assert_allclose(0.55 * _norm(ids[b] @ w_bar), want[b],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('mmlayer', [2, 3])
def test_forward_and_score(tiny_dataset, mmlayer):
  b = _built(tiny_dataset, mmlayer=mmlayer)
  ds = b.dataset
  got = mr.forward(b.model, b.data, b.hp)
  want = _ref_forward(_p(b.model), ds, mmlayer, np.random.default_rng(1))
  for key in ('users', 'items', 'image_items', 'text_items', 'image_users',
              'text_users'):
    np.testing.assert_allclose(_np(got[key]), want[key], rtol=2e-4,
                               atol=2e-6, err_msg=key)
  users, items = mr.score(b.model, b.data, b.hp)
  np.testing.assert_allclose(_np(users), want['users'], rtol=2e-4, atol=2e-6)
  np.testing.assert_allclose(_np(items), want['items'], rtol=2e-4, atol=2e-6)


def _jaxpr_shapes(jaxpr):
  """Every intermediate's shape in a jaxpr and its sub-jaxprs."""
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      yield tuple(getattr(var.aval, 'shape', ()))
    for param in eqn.params.values():
      subs = param if isinstance(param, (list, tuple)) else [param]
      for sub in subs:
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          yield from _jaxpr_shapes(inner)


def test_grace_blockwise_is_exact_and_never_n_by_n():
  rng = np.random.default_rng(2)
  n, d, tau = 37, 8, 0.3
  z1, z2 = rng.normal(size=(n, d)), rng.normal(size=(n, d))
  z1[5] = 0.0   # items nobody trained on: c(a_i, a_i) = 0, not 1
  z2[11] = 0.0
  with jax.enable_x64(True):
    want = _ref_grace(z1, z2, tau)
    for block in (1, 5, 16, 37, 100):
      got = mr.grace_all_items(jnp.asarray(z1), jnp.asarray(z2), tau, block)
      np.testing.assert_allclose(float(got), want, rtol=1e-12,
                                 err_msg=f'block {block}')
    grad = jax.grad(mr.grace_all_items, (0, 1))
    g1, g2 = (_np(g) for g in grad(jnp.asarray(z1), jnp.asarray(z2), tau, 8))
    eps = 1e-6
    for which, g in ((0, g1), (1, g2)):
      for _ in range(3):
        step = rng.normal(size=(n, d))
        # F.normalize is x / 1e-12 near a zero row: no finite difference
        # there (the row's rows of G_iu are empty, so no parameter sees it).
        step[[5, 11]] = 0.0
        zs = [z1, z2]
        plus = [z.copy() for z in zs]
        minus = [z.copy() for z in zs]
        plus[which] += eps * step
        minus[which] -= eps * step
        numeric = (_ref_grace(*plus, tau) - _ref_grace(*minus, tau)) / (
            2 * eps)
        np.testing.assert_allclose(np.sum(g * step), numeric, rtol=1e-6,
                                   atol=1e-10)
    # The value and the gradient hold [block, n] tiles, never [n, n].
    jaxpr = jax.make_jaxpr(lambda a, b: jax.value_and_grad(
        mr.grace_all_items, (0, 1))(a, b, tau, 8))(jnp.asarray(z1),
                                                   jnp.asarray(z2))
    shapes = set(_jaxpr_shapes(jaxpr.jaxpr))
    assert (8, n) in shapes
    assert not any(s[-2:] == (n, n) for s in shapes if len(s) >= 2)


def test_loss_parts_and_gradient(tiny_dataset):
  b = _built(tiny_dataset, mmlayer=2)
  ds, hp = b.dataset, b.hp
  rng = np.random.default_rng(3)
  batch = _batch(ds, rng)
  graphdef, params, rest = nnx.split(b.model, nnx.Param, ...)
  f = lambda q: mr.loss(nnx.merge(graphdef, q, rest), b.data, batch, None,
                        hp)
  (total, (parts, _)), grads = jax.value_and_grad(f, has_aux=True)(params)
  p = _p(b.model)
  want, _ = _ref_parts(p, ds, batch, hp, np.random.default_rng(4))
  assert set(parts) == set(want)
  for name, value in want.items():
    np.testing.assert_allclose(float(parts[name]), value, rtol=1e-4,
                               err_msg=name)
  np.testing.assert_allclose(float(total), sum(want.values()), rtol=1e-4)
  g = nnx.to_pure_dict(grads)
  total_np = lambda q: sum(_ref_parts(q, ds, batch, hp,
                                      np.random.default_rng(4))[0].values())
  for name, value in p.items():
    step = rng.normal(size=value.shape)
    eps = 1e-5
    numeric = (total_np({**p, name: value + eps * step})
               - total_np({**p, name: value - eps * step})) / (2 * eps)
    analytic = float(np.sum(_np(g[name]) * step))
    np.testing.assert_allclose(analytic, numeric, rtol=2e-3, atol=1e-6,
                               err_msg=name)


def _torch_adam_first_step(p, g, lr, eps=1e-8):
  """torch.optim.Adam(lr, betas (.9, .999), weight_decay 0), step 1."""
  m, v = 0.1 * g, 0.001 * g * g
  return p - lr * (m / 0.1) / (np.sqrt(v / 0.001) + eps)


def test_one_optimizer_step(tiny_dataset):
  b = _built(tiny_dataset, mmlayer=2)
  hp = b.hp
  assert hp.learning_rate == 1e-3  # MRLib's overall.yaml
  graphdef, params, rest = nnx.split(b.model, nnx.Param, ...)
  tx = b.family.make_optimizer(hp)
  ctx = family.EpochContext(b.family, graphdef, rest, b.data, hp, tx)
  batch = _batch(b.dataset, np.random.default_rng(5))
  step = jax.jit(lambda *a: b.family.train_step(ctx, *a))
  out = step(params, tx.init(params), batch, jax.random.PRNGKey(0),
             jnp.int32(0))
  p0 = _p(b.model)
  want, ref = _ref_parts(p0, b.dataset, batch, hp, np.random.default_rng(6))
  for name, value in want.items():
    np.testing.assert_allclose(float(out.parts[name]), value, rtol=1e-4,
                               err_msg=name)
  # The step's scores are this forward's embeddings (before the update).
  np.testing.assert_allclose(_np(out.scores[0]), ref['users'], rtol=2e-4,
                             atol=2e-6)
  grads = nnx.to_pure_dict(jax.grad(lambda q: mr.loss(
      nnx.merge(graphdef, q, rest), b.data, batch, None, hp)[0])(params))
  p1 = {k: _np(v) for k, v in nnx.to_pure_dict(out.params).items()}
  assert set(p1) == set(p0) == {
      'image_w', 'image_b', 'text_w', 'text_b', 'common_w', 'common_b',
      'user_emb', 'item_emb', 'attn_cat'}
  for name in p0:
    np.testing.assert_allclose(
        p1[name], _torch_adam_first_step(p0[name], _np(grads[name]), 1e-3),
        rtol=1e-5, atol=1e-7, err_msg=name)


def test_defaults_are_the_first_cell_of_mrlibs_grid():
  fam = mr.MMSSL_MRLIB_FAMILY
  defaults = fam.config_defaults()
  # MMSSL.yaml's hyper_parameters order, G_rate (unused by MRLib) left out.
  assert list(defaults['grid']) == ['reg_weight', 'ssl_alpha', 'ssl_temp',
                                    'mmlayer']
  for key, values in defaults['grid'].items():
    assert defaults[key] == values[0], key
  assert 'G_rate' not in defaults and 'g_rate' not in fam.config_spec
  fields = {f.name for f in dataclasses.fields(mr.Hparams)}
  assert fam.sweepable <= fields
