"""MMSSL (official HKUDS/MMSSL) against a numpy float64 reading of its code.

The references (`_ref_*`) are written from MMSSL/Models.py and main.py and
share nothing with the port: dense D_u^-1/2 R graphs, the attention block as
written (w_q, the K = Q slip, heads, softmax over the key modality), the
Discriminator with a hand-written backward through its batch-norm layers
for the gradient penalty, torch's Adam / AdamW updates, and the per-batch
modality-graph bookkeeping of `Trainer.train` (T = 1).
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import conftest
from mentor_jax import family
from mentor_jax.models.mmssl import model as mm
from mentor_jax.models.mmssl import training as tr


def _np(x):
  return np.asarray(x, np.float64)


def _built(tiny_dataset, **kw):
  kw = {'train_batch_size': 16, 'm_topk_rate': 0.1, **kw}
  return conftest.build_baseline('mmssl', tiny_dataset, **kw)


def _R(dataset):
  indptr, items = dataset.split('train')
  r = np.zeros((dataset.n_users, dataset.n_items))
  for u in range(dataset.n_users):
    for i in items[indptr[u]:indptr[u + 1]]:
      r[u, i] += 1.0
  return r


def _norm(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _softmax(x, axis):
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def _p(model):
  return {k: _np(v) for k, v in
          nnx.to_pure_dict(nnx.state(model, nnx.Param)).items()}


def _ref_attention(ids, w_q, w_cat, heads):
  """multi_head_self_attention as written: q = k = v = the modality stack."""
  q = np.stack(ids)                       # [beh, N, d]
  beh, n, d = q.shape
  dh = d // heads
  big_q = (q @ w_q).reshape(beh, n, heads, dh).transpose(2, 0, 1, 3)
  big_k = big_q                           # K = Q.reshape(...) in the code
  att = np.sum(big_q[:, :, None] * big_k[:, None], -1) / np.sqrt(dh)
  att = _softmax(att[..., None], axis=2)  # [H, beh, beh, N, 1]
  z = np.sum(att * q[None, :, None], axis=2)  # V broadcast on the query
  z = np.concatenate(list(z), -1) @ w_cat      # [beh, N, d]
  return z


def _ref_forward(p, ds, graph, heads=4, rng=None):
  """Models.py forward in eval mode; `graph` = (A_ui, A_iu) or None (full)."""
  r = _R(ds)
  g_ui = np.diag((r.sum(1) + 1e-8) ** -0.5) @ r
  g_iu = np.diag((r.sum(0) + 1e-8) ** -0.5) @ r.T
  a_ui, a_iu = graph if graph is not None else (g_ui, g_iu)
  out = {}
  for name, feat in (('image', ds.arrays['feat_v']),
                     ('text', ds.arrays['feat_t'])):
    f = _np(feat) @ p[f'{name}_w'] + p[f'{name}_b']
    out[f'{name}_users'] = g_ui @ f
    out[f'{name}_items'] = g_iu @ out[f'{name}_users']
  eu, ei = p['user_emb'], p['item_emb']
  w_q = (rng or np.random.default_rng(0)).normal(size=(eu.shape[1],) * 2)
  ids_u = [a_ui @ ei, a_ui @ ei]
  ids_i = [a_iu @ eu, a_iu @ eu]
  out['image_user_id'] = ids_u[0]
  u = eu + 0.36 * _norm(_ref_attention(ids_u, w_q, p['attn_cat'],
                                       heads).mean(0))
  i = ei + 0.36 * _norm(_ref_attention(ids_i, w_q, p['attn_cat'],
                                       heads).mean(0))
  us, its = [u], [i]
  for layer in range(2):
    u = g_ui @ i
    u = _softmax(u, -1) if layer == 1 else u  # the last layer only
    i = g_iu @ u
    i = _softmax(i, -1) if layer == 1 else i
    us.append(u)
    its.append(i)
  out['users'] = (np.mean(us, 0) + 0.55 * _norm(out['image_users'])
                  + 0.55 * _norm(out['text_users']))
  out['items'] = (np.mean(its, 0) + 0.55 * _norm(out['image_items'])
                  + 0.55 * _norm(out['text_items']))
  return out


def _topk_dense(users, items, n_users, n_items):
  a = np.zeros((n_users, n_items))
  for b, u in enumerate(users):
    for i in items[b]:
      a[u, i] += 1.0
  return (np.diag((a.sum(1) + 1e-8) ** -0.5) @ a,
          np.diag((a.sum(0) + 1e-8) ** -0.5) @ a.T)


def _set_graph(model, users, items):
  model.aug_full[...] = jnp.zeros(())
  model.aug_valid[...] = jnp.ones(())
  model.aug_users[...] = jnp.asarray(users, jnp.float32)
  model.aug_items[...] = jnp.asarray(np.stack([items, items]), jnp.float32)


def test_forward_full_and_topk_graphs(tiny_dataset):
  b = _built(tiny_dataset)
  ds = b.dataset
  for graph in (None, 'topk', 'empty'):
    if graph == 'topk':
      rng = np.random.default_rng(1)
      users = rng.choice(ds.n_users, 16, replace=False)
      items = np.stack([rng.choice(ds.n_items, 4, replace=False)
                        for _ in users])
      _set_graph(b.model, users, items)
      dense = _topk_dense(users, items, ds.n_users, ds.n_items)
    elif graph == 'empty':
      b.model.aug_valid[...] = jnp.zeros(())
      dense = (np.zeros((ds.n_users, ds.n_items)),) * 2
      dense = (dense[0], dense[0].T)
    else:
      dense = None
    got = mm.forward(b.model, b.data, b.hp, None)
    want = _ref_forward(_p(b.model), ds, dense)
    for key in ('users', 'items', 'image_users', 'text_items',
                'image_user_id'):
      np.testing.assert_allclose(_np(got[key]), want[key], rtol=2e-4,
                                 atol=2e-5, err_msg=f'{graph} {key}')
    users_s, items_s = tr.score(b.model, b.data, b.hp)
    np.testing.assert_allclose(_np(users_s), want['users'], rtol=2e-4,
                               atol=2e-5)


def _ref_disc(p, x, with_input_grad=False):
  """Discriminator.forward in train mode (no dropout) and d sum / d x."""
  hs, cache = x, []
  for j in range(2):
    h = hs @ p[f'disc_w{j}'] + p[f'disc_b{j}']  # LeakyReLU(True): slope 1
    mu, var = h.mean(0), h.var(0)
    xhat = (h - mu) / np.sqrt(var + 1e-5)
    cache.append((xhat, np.sqrt(var + 1e-5), p[f'disc_bn_scale{j}']))
    hs = xhat * p[f'disc_bn_scale{j}'] + p[f'disc_bn_bias{j}']
  o = hs @ p['disc_w2'] + p['disc_b2']
  s = 1 / (1 + np.exp(-o))
  out = 100 * s[:, 0]
  if not with_input_grad:
    return out
  g = (100 * s * (1 - s)) @ p['disc_w2'].T
  for j in (1, 0):
    xhat, sd, gamma = cache[j]
    gx = g * gamma
    gh = (gx - gx.mean(0) - xhat * (gx * xhat).mean(0)) / sd
    g = gh @ p[f'disc_w{j}'].T
  return out, g


def _ref_disc_loss(p, fake, real, alpha, gp_rate=1.0):
  mix = alpha * real + (1 - alpha) * fake
  _, g = _ref_disc(p, mix, True)
  gp = np.mean((np.linalg.norm(g, axis=1) - 1) ** 2) * 0.3
  return (-np.mean(_ref_disc(p, real)) + np.mean(_ref_disc(p, fake))
          + gp_rate * gp)


def _nodrop(hp):
  return family.with_values(hp, {'g_drop1': 0.0, 'g_drop2': 0.0,
                                 'drop_rate': 0.0})


def test_gradient_penalty_and_its_gradient(tiny_dataset):
  b = _built(tiny_dataset)
  hp = _nodrop(b.hp)
  rng = np.random.default_rng(2)
  n, i = 32, b.dataset.n_items
  fake, real = rng.random((n, i)), rng.random((n, i))
  alpha = rng.random((n, 1))
  dp = {k: jnp.asarray(v) for k, v in mm.disc_params(b.model).items()}
  p = {k: _np(v) for k, v in dp.items()}
  f = lambda q: mm.disc_loss(q, jnp.asarray(fake, jnp.float32),
                             jnp.asarray(real, jnp.float32),
                             jnp.asarray(alpha, jnp.float32), [None] * 3,
                             hp)[0]
  np.testing.assert_allclose(float(f(dp)),
                             _ref_disc_loss(p, fake, real, alpha), rtol=1e-4)
  grads = jax.grad(f)(dp)
  for name in ('disc_w0', 'disc_bn_scale0', 'disc_w1', 'disc_b2'):
    flat = p[name].reshape(-1)
    for idx in rng.choice(flat.size, min(6, flat.size), replace=False):
      hi, lo = {**p}, {**p}
      hi[name] = flat.copy()
      lo[name] = flat.copy()
      hi[name][idx] += 1e-6
      lo[name][idx] -= 1e-6
      hi[name] = hi[name].reshape(p[name].shape)
      lo[name] = lo[name].reshape(p[name].shape)
      fd = (_ref_disc_loss(hi, fake, real, alpha)
            - _ref_disc_loss(lo, fake, real, alpha)) / 2e-6
      got = float(_np(grads[name]).reshape(-1)[idx])
      assert abs(got - fd) <= 2e-3 * max(1.0, abs(fd)), (name, idx, got, fd)


def _ref_grace(z1, z2, tau):
  a, b = _norm(z1), _norm(z2)
  refl, between = np.exp(a @ a.T / tau), np.exp(a @ b.T / tau)
  ratio = np.diag(between) / (refl.sum(1) + between.sum(1) - np.diag(refl))
  return np.mean(-np.log(ratio + 1e-8))


def test_user_sim_real_rows_and_contrastive_loss(tiny_dataset):
  b = _built(tiny_dataset)
  ds, rng = b.dataset, np.random.default_rng(3)
  users = rng.choice(ds.n_users, 16, replace=False)
  r_rows = _R(ds)[users]
  np.testing.assert_array_equal(_np(mm.batch_rows(
      b.data, jnp.asarray(users), b.hp)), r_rows)
  u_emb, i_emb = rng.normal(size=(16, 8)), rng.normal(size=(ds.n_items, 8))
  sim = _norm((u_emb @ i_emb.T) * (1 - r_rows))
  np.testing.assert_allclose(_np(mm.user_sim(
      jnp.asarray(u_emb), jnp.asarray(i_emb), jnp.asarray(r_rows))), sim,
                             rtol=1e-5, atol=1e-6)
  unif = rng.random(r_rows.shape)
  # softmax(u_ui - log_log_scale*log(-log(U+1e-8)+1e-8)/real_data_tau):
  # torch's precedence divides only the noise by the temperature.
  noise = np.log(-np.log(unif + 1e-8) + 1e-8)
  want = _norm(_softmax(r_rows - 1e-5 * noise / 0.005, 1) + 100 * sim)
  np.testing.assert_allclose(_np(mm.real_rows(
      jnp.asarray(r_rows), jnp.asarray(sim), jnp.asarray(unif), b.hp)),
                             want, rtol=1e-5, atol=1e-7)
  z1, z2 = rng.normal(size=(16, 8)), rng.normal(size=(16, 8))
  np.testing.assert_allclose(float(tr.grace(jnp.asarray(z1), jnp.asarray(z2),
                                            0.5)),
                             _ref_grace(z1, z2, 0.5), rtol=1e-5)
  z1[3] = 0.0  # An empty modality view: finite, no NaN gradient.
  g = jax.grad(lambda a: tr.grace(a, jnp.asarray(z2), 0.5))(jnp.asarray(z1))
  assert np.isfinite(_np(g)).all()


def _batch(ds, rng, n=16):
  users = rng.choice(ds.n_users, n, replace=False)
  r = _R(ds)
  pos = np.array([rng.choice(np.flatnonzero(r[u])) for u in users])
  neg = np.array([rng.choice(np.flatnonzero(r[u] == 0)) for u in users])
  from mentor_jax import data as data_lib
  return data_lib.Batches(jnp.asarray(users, jnp.int32), jnp.asarray(pos),
                          jnp.asarray(neg), jnp.ones(n))


def _ref_generator_parts(p, ds, batch, dense=None):
  out = _ref_forward(p, ds, dense)
  users = np.asarray(batch.users)
  u, pi, ni = (out['users'][users], out['items'][np.asarray(batch.pos_items)],
               out['items'][np.asarray(batch.neg_items)])
  r_rows = _R(ds)[users]
  sims = [_norm((out[f'{m}_users'][users] @ out[f'{m}_items'].T)
                * (1 - r_rows)) for m in ('image', 'text')]
  fake = _ref_disc(p, np.concatenate(sims))
  x = np.sum(u * pi, 1) - np.sum(u * ni, 1)
  feat = sum(np.sum(out[k] ** 2) for k in ('image_items', 'text_items',
                                           'image_users', 'text_users'))
  return {'bpr': np.mean(np.log1p(np.exp(-x))),
          'reg': 1e-5 * 0.5 * (np.sum(u ** 2) + np.sum(pi ** 2)
                               + np.sum(ni ** 2)) / len(users),
          'feat_reg': 1e-5 * 0.5 * feat / ds.n_items,
          'cl': 0.03 * 2 * _ref_grace(out['image_user_id'][users], u, 0.5),
          'adv': -1e-4 * np.mean(fake)}, sims


def test_generator_loss_parts(tiny_dataset):
  b = _built(tiny_dataset)
  hp = _nodrop(b.hp)
  batch = _batch(b.dataset, np.random.default_rng(4))
  _, (parts, _) = tr.loss(b.model, b.data, batch, jax.random.PRNGKey(0), hp)
  want, _ = _ref_generator_parts(_p(b.model), b.dataset, batch)
  for name, value in want.items():
    np.testing.assert_allclose(float(parts[name]), value, rtol=2e-4,
                               atol=1e-9, err_msg=name)


def _torch_adam(p, g, lr, b1, b2, wd=0.0, eps=1e-8):
  """One torch Adam / AdamW (decoupled wd) step from zero moments."""
  p = p * (1 - lr * wd)
  m, v = (1 - b1) * g, (1 - b2) * g * g
  return p - lr * (m / (1 - b1)) / (np.sqrt(v / (1 - b2)) + eps)


def _ctx(b, hp):
  graphdef, params, rest = nnx.split(b.model, nnx.Param, ...)
  tx = tr.make_optimizer(hp)
  return (family.EpochContext(b.family, graphdef, rest, b.data, hp, tx),
          params, tx.init(params))


def test_one_step_of_each_optimizer_and_the_graph_state(tiny_dataset):
  b = _built(tiny_dataset)
  hp = _nodrop(b.hp)
  ctx, params, opt = _ctx(b, hp)
  p0 = {k: _np(v) for k, v in nnx.to_pure_dict(params).items()}
  rng = np.random.default_rng(5)
  batch = _batch(b.dataset, rng)
  key = jax.random.PRNGKey(7)
  step = jax.jit(lambda *a: tr.train_step(ctx, *a))
  out = step(params, opt, batch, key, jnp.int32(0))
  p1 = {k: _np(v) for k, v in nnx.to_pure_dict(out.params).items()}
  # The D step: fake / real rows of the pre-step (no-grad) forward, the
  # step's own uniforms, Adam(3e-4, betas .5 / .9) on D only.
  d_key, g_key = jax.random.split(key)
  ref = _ref_forward(p0, b.dataset, None)
  users = np.asarray(batch.users)
  r_rows = _R(b.dataset)[users]
  sim = lambda m: _norm((ref[f'{m}users'][users] @ ref[f'{m}items'].T)
                        * (1 - r_rows))
  fake = np.concatenate([sim('image_'), sim('text_')])
  unif = _np(jax.random.uniform(jax.random.fold_in(d_key, 1), r_rows.shape))
  noise = np.log(-np.log(unif + 1e-8) + 1e-8)
  real = _norm(_softmax(r_rows - 1e-5 * noise / 0.005, 1) + 100 * sim(''))
  real = np.concatenate([real, real])
  alpha = _np(jax.random.uniform(jax.random.fold_in(d_key, 2), (32, 1)))
  np.testing.assert_allclose(float(out.parts['disc']),
                             _ref_disc_loss(p0, fake, real, alpha),
                             rtol=1e-3)
  dgrads = jax.grad(lambda q: mm.disc_loss(
      q, jnp.asarray(fake, jnp.float32), jnp.asarray(real, jnp.float32),
      jnp.asarray(alpha, jnp.float32), [None] * 3, hp)[0])(
          {k: jnp.asarray(p0[k], jnp.float32) for k in mm.disc_params(
              b.model)})
  for name, g in dgrads.items():
    if name in ('disc_b0', 'disc_b1', 'disc_bn_bias0'):
      # A shift a batch norm removes: gradient 0 up to rounding noise,
      # which Adam's first step turns into +-lr.
      continue
    np.testing.assert_allclose(p1[name], _torch_adam(
        p0[name], _np(g), 3e-4, 0.5, 0.9), rtol=1e-4, atol=3e-6,
                               err_msg=name)
  # The G step: AdamW(5.5e-4, wd 0.01) on the generator, D after its step.
  p_mid = {**p0, **{k: p1[k] for k in dgrads}}
  model = ctx.model(params)
  for k in dgrads:
    getattr(model, k)[...] = jnp.asarray(p_mid[k], jnp.float32)
  _, g_params, _ = nnx.split(model, nnx.Param, ...)
  grads = jax.grad(lambda q: tr.loss(ctx.model(q), b.data, batch, g_key,
                                     hp)[0])(g_params)
  grads = {k: _np(v) for k, v in nnx.to_pure_dict(grads).items()}
  for name in ('user_emb', 'item_emb', 'image_w', 'text_b', 'attn_cat'):
    np.testing.assert_allclose(p1[name], _torch_adam(
        p0[name], grads[name], 5.5e-4, 0.9, 0.999, wd=0.01), rtol=1e-4,
                               atol=3e-6, err_msg=name)
  # Batch 0 collects the top-k of its image / text rows (k = int(40 * .1)).
  _, sims = _ref_generator_parts(p_mid, b.dataset, batch)
  assert p1['aug_items'].shape == (2, 16, 4)
  np.testing.assert_array_equal(p1['pending_users'], users)
  for m in range(2):
    np.testing.assert_array_equal(np.sort(p1['pending_items'][m], 1),
                                  np.sort(np.argsort(-sims[m], 1)[:, :4], 1))
  assert p1['aug_full'] == 1 and p1['pending_valid'] == 1
  # Batch 1 installs it (A_m = that top-k graph) and empties the
  # collection; batch 2 installs the empty collection: A_m = 0.
  out2 = step(out.params, out.opt_state, batch, key, jnp.int32(1))
  p2 = {k: _np(v) for k, v in nnx.to_pure_dict(out2.params).items()}
  assert p2['aug_full'] == 0 and p2['aug_valid'] == 1
  assert p2['pending_valid'] == 0
  np.testing.assert_array_equal(p2['aug_items'], p1['pending_items'])
  out3 = step(out2.params, out2.opt_state, batch, key, jnp.int32(2))
  assert float(out3.params['aug_valid'][...]) == 0
  ids = mm.forward(ctx.model(out3.params), b.data, hp)['image_user_id']
  assert not np.any(_np(ids))


def test_epoch_batches_follow_the_official_sampler(tiny_dataset):
  b = _built(tiny_dataset)
  ds, hp = b.dataset, b.hp
  r = _R(ds)
  n_steps = ds.n_train // 16 + 1
  counts = np.zeros(ds.n_users)
  n_draws = 0
  for seed in range(20):
    bt = jax.tree.map(np.asarray, tr.epoch_batches(
        jax.random.PRNGKey(seed), b.data, hp))
    assert bt.users.shape == (n_steps, 16)
    for users, pos, neg in zip(bt.users, bt.pos_items, bt.neg_items):
      assert len(set(users)) == 16  # rd.sample: without replacement
      assert np.all(r[users, pos] > 0) and np.all(r[users, neg] == 0)
      counts[users] += 1
      n_draws += 1
  exist = r.sum(1) > 0
  assert counts[~exist].sum() == 0
  # Each existing user is in a batch with probability 16 / n_exist.
  p = 16 / exist.sum()
  sd = np.sqrt(n_draws * p * (1 - p))
  assert np.all(np.abs(counts[exist] - n_draws * p) <= 5 * sd)


def test_k_zero_warns_at_creation(tiny_dataset, caplog):
  with caplog.at_level(logging.WARNING):
    b = _built(tiny_dataset, m_topk_rate=1e-4)  # int(40 * 1e-4) = 0
  assert mm.topk_of(b.dataset.n_items, b.hp) == 0
  assert 'augmented modality graphs are empty' in caplog.text
  assert b.model.aug_items[...].shape == (2, 16, 1)  # k columns used: 0
