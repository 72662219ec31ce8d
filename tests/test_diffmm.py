"""DiffMM (official HKUDS/DiffMM) against numpy float64 references written
from the official code (Model.py, Main.py, Utils.py), on the tiny graph.

Checked: the schedule constants, the denoiser's forward and loss at every
timestep (SNR weights), the reverse pass and the rebuilt graph (self-loops,
symmetric normalization, edge dropout), forward_MM / forward_cl_MM, the
BPR with its fixed divisor, the full-table reg, both contrastive losses,
gradients against finite differences of the numpy loss, and one step of
each optimizer (the denoisers' phase and the recommender's step).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest
from flax import nnx
from mentor_jax import data as data_lib
from mentor_jax import family
from mentor_jax.models.diffmm import diffusion
from mentor_jax.models.diffmm import model as diffmm


def _built(npz, **overrides):
  b = conftest.build_baseline('diffmm', npz, **overrides)
  return b.dataset, b.hp, b.model, b.data


def _np(x):
  return np.asarray(x, np.float64)


def _dense_r(dataset):
  r = np.zeros((dataset.n_users, dataset.n_items))
  r[dataset.arrays['train_user'], dataset.arrays['train_item']] = 1.0
  return r


def _np_graph(pairs_u, pairs_i, n_users, n_items):
  """Main.buildUIMatrix / makeTorchAdj: D^-1/2((A != 0) + I)D^-1/2."""
  n = n_users + n_items
  a = np.zeros((n, n))
  a[pairs_u, n_users + pairs_i] = 1.0
  a[n_users + pairs_i, pairs_u] = 1.0
  a = a + np.eye(n)
  d = a.sum(1) ** -0.5
  return d[:, None] * a * d[None, :]


def _dense(csr):
  out = np.zeros(csr.shape)
  np.add.at(out, (np.asarray(csr.rows), np.asarray(csr.indices)),
            _np(csr.values))
  return out


def _np_denoise(p, x, t, keep=None):
  p = {k: _np(v) for k, v in p.items()}
  d = p['emb_w'].shape[0]
  freqs = np.exp(-np.log(10000) * np.arange(d // 2) / (d // 2))
  temp = np.asarray(t, np.float64)[:, None] * freqs[None]
  emb = np.concatenate([np.cos(temp), np.sin(temp)], -1) @ p['emb_w'] + (
      p['emb_b'])
  if keep is not None:
    x = x * keep / 0.5
  h = np.tanh(np.concatenate([x, emb], -1) @ p['in_w'] + p['in_b'])
  return h @ p['out_w'] + p['out_b']


def _np_schedule():
  var = np.linspace(0.1 * 1e-4, 0.1 * 0.02, 5)
  ab = 1 - var
  betas = np.array([1 - ab[0]] + [min(1 - ab[i] / ab[i - 1], 0.999)
                                   for i in range(1, 5)])
  betas[0] = 1e-4
  cum = np.cumprod(1 - betas)
  prev = np.concatenate([[1.0], cum[:-1]])
  snr = cum / (1 - cum)
  return (cum, betas * np.sqrt(prev) / (1 - cum),
          (1 - prev) * np.sqrt(1 - betas) / (1 - cum), snr)


def test_schedule_constants():
  s = diffusion.schedule()
  cum, c1, c2, snr = _np_schedule()
  np.testing.assert_allclose(s.alphas_cumprod, cum, rtol=1e-12)
  np.testing.assert_allclose(s.coef1, c1, rtol=1e-12)
  np.testing.assert_allclose(s.coef2, c2, rtol=1e-12, atol=1e-15)
  # BASELINES_BATCH2 §5.2: w_1..4 ~ 8326, 760, 285, 149 and w_0 = 1.
  np.testing.assert_allclose(s.loss_weight, [1, 8326.2, 760.45, 285.32,
                                             149.49], rtol=1e-4)
  np.testing.assert_allclose(s.loss_weight[1:], snr[:-1] - snr[1:])


def test_dense_rows_are_rows_of_r(tiny_dataset):
  dataset, hp, _, data = _built(tiny_dataset)
  users = jnp.asarray([3, 0, 59, 3], jnp.int32)
  got = diffusion.dense_rows(data.train_indptr, data.train_items, users,
                             dataset.n_items, hp.max_row_len)
  np.testing.assert_array_equal(np.asarray(got), _dense_r(dataset)[users])


def test_denoiser_forward_and_loss_at_every_timestep(tiny_dataset):
  dataset, hp, model, data = _built(tiny_dataset)
  x0 = _dense_r(dataset)
  p = model.denoise_v.arrays()
  feats = diffmm.modal_feats(model, data, hp)[0]
  items = model.item_emb[...]
  key = jax.random.PRNGKey(7)
  diff, gc = diffusion.training_losses(p, jnp.asarray(x0, jnp.float32),
                                       items, feats, key, diffusion.schedule())
  # The same draws, then Model.py's training_losses in float64.
  t_key, noise_key, drop_key = jax.random.split(key, 3)
  t = np.asarray(jax.random.randint(t_key, (x0.shape[0],), 0, 5))
  assert set(t) == set(range(5))  # Every timestep is checked.
  noise = _np(jax.random.normal(noise_key, x0.shape))
  keep = _np(jax.random.bernoulli(drop_key, 0.5, x0.shape))
  cum, _, _, snr = _np_schedule()
  x_t = np.sqrt(cum[t])[:, None] * x0 + np.sqrt(1 - cum[t])[:, None] * noise
  out = _np_denoise(p, x_t, t, keep)
  weight = np.where(t == 0, 1.0, snr[t - 1] - snr[t])
  np.testing.assert_allclose(_np(diff), weight * ((x0 - out) ** 2).mean(1),
                             rtol=2e-4)
  np.testing.assert_allclose(
      _np(gc), ((out @ _np(feats) - x0 @ _np(items)) ** 2).mean(1),
      rtol=2e-4)
  # Without dropout (the reverse pass), at each t.
  for step in range(5):
    ts = np.full(x0.shape[0], step)
    np.testing.assert_allclose(
        _np(diffusion.denoise(p, jnp.asarray(x0, jnp.float32),
                              jnp.asarray(ts))),
        _np_denoise(p, x0, ts), rtol=1e-4, atol=1e-5)


def _np_reverse(p, x0):
  _, c1, c2, _ = _np_schedule()
  x = x0
  for i in range(4, -1, -1):
    x = c1[i] * _np_denoise(p, x, np.full(x.shape[0], i)) + c2[i] * x
  return x


@pytest.mark.parametrize('keep_rate', [1.0, 0.5])
def test_reverse_pass_and_rebuilt_graph(tiny_dataset, keep_rate):
  dataset, hp, model, data = _built(tiny_dataset, keep_rate=keep_rate,
                                    train_batch_size=16)
  u_n, i_n = dataset.n_users, dataset.n_items
  key = jax.random.PRNGKey(3) if keep_rate < 1 else None
  graphs = diffmm.rebuild_graphs(model, data, hp, key)
  x0 = _dense_r(dataset)
  np.testing.assert_allclose(_dense(graphs['adj']), _np_graph(
      dataset.arrays['train_user'], dataset.arrays['train_item'], u_n, i_n),
      atol=1e-6)
  for m in diffmm.MODALITIES:
    p = getattr(model, f'denoise_{m}').arrays()
    ref = _np_reverse(p, x0)
    got = _np(diffusion.reverse_pass(p, jnp.asarray(x0, jnp.float32),
                                     diffusion.schedule()))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    g, g_t = graphs[m]
    assert g.nnz == 2 * u_n * hp.rebuild_k + u_n + i_n  # Static shape.
    picked = np.asarray(g.indices)[np.asarray(g.rows) < u_n]
    picked = picked[picked >= u_n] - u_n
    assert picked.shape == (u_n,)
    # The top-1 item of the reverse pass (up to float ties).
    np.testing.assert_allclose(ref[np.arange(u_n), picked], ref.max(1),
                               atol=1e-5)
    want = _np_graph(np.arange(u_n), picked, u_n, i_n)
    assert np.all(np.diag(want) > 0) and np.allclose(want, want.T)
    got = _dense(g)
    np.testing.assert_allclose(_dense(g_t), got.T, atol=1e-7)
    if keep_rate == 1.0:
      np.testing.assert_allclose(got, want, atol=1e-6)
    else:  # Every entry, self-loops too: 0 or its value / keep_rate.
      kept = got != 0
      np.testing.assert_allclose(got[kept], want[kept] / keep_rate,
                                 rtol=1e-6)
      n = g.nnz
      frac = kept.sum() / n
      assert abs(frac - keep_rate) < 4 * np.sqrt(keep_rate * 0.5 / n)
      assert not np.all(kept[np.diag_indices(u_n + i_n)])


def _np_feats(params, dataset, trans):
  out = []
  for m, raw in (('v', dataset.arrays['feat_v']),
                 ('t', dataset.arrays['feat_t'])):
    h = _np(raw) @ params[f'trans_{m}_w']
    if trans == 1:
      out.append(h + params[f'trans_{m}_b'])
    else:
      out.append(np.where(h > 0, h, 0.2 * h))
  return out


def _nrm(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _np_contrast(a, b, nodes, temp):
  a, b = _nrm(a), _nrm(b)
  an = a[nodes]
  nume = np.exp((an * b[nodes]).sum(-1) / temp)
  deno = np.exp(an @ b.T / temp).sum(-1)
  return -np.log(nume / deno).mean()


def _np_losses(params, dataset, dense_graphs, batch, hp):
  """Main.trainEpoch's recommender loss in float64 (rows of mask 1)."""
  adj, g = dense_graphs['adj'], dense_graphs
  eu, ei = params['user_emb'], params['item_emb']
  u_n = eu.shape[0]
  w = np.exp(params['modal_weight']) / np.exp(params['modal_weight']).sum()
  feats = _np_feats(params, dataset, hp.trans)
  modal, views = 0.0, []
  for k, m in enumerate('vt'):
    x = adj @ np.concatenate([eu, _nrm(feats[k])])
    x = x + adj @ np.concatenate([x[:u_n], ei])
    modal = modal + w[k] * (x + hp.ris_adj_lambda
                            * g[m] @ np.concatenate([eu, ei]))
    v = g[m] @ np.concatenate([eu, _nrm(feats[k])])
    v = v + adj @ v  # gnn_layer = 1
    views.append((v[:u_n], v[u_n:]))
  out = modal + adj @ modal + hp.ris_lambda * _nrm(modal)
  users, items = out[:u_n], out[u_n:]
  keep = np.asarray(batch.mask) > 0
  anc, pos, neg = (np.asarray(x)[keep] for x in
                   (batch.users, batch.pos_items, batch.neg_items))
  diff = (users[anc] * (items[pos] - items[neg])).sum(-1)
  bpr = -np.log(1 / (1 + np.exp(-diff))).sum() / 1024  # args.batch
  reg = hp.reg_weight * ((eu ** 2).sum() + (ei ** 2).sum())
  c = lambda a, b: (_np_contrast(a[0], b[0], anc, hp.temp)
                    + _np_contrast(a[1], b[1], pos, hp.temp))
  if hp.cl_method == 1:
    cl = sum(c((users, items), v) for v in views)
  else:
    cl = c(views[0], views[1])
  return {'bpr': bpr, 'reg': reg, 'cl': hp.ssl_reg * cl}, (users, items)


def _rec_params(model):
  out = {k: _np(getattr(model, k)[...]) for k in
         ('user_emb', 'item_emb', 'modal_weight', 'trans_v_w', 'trans_t_w')}
  for k in ('trans_v_b', 'trans_t_b'):
    if hasattr(model, k):
      out[k] = _np(getattr(model, k)[...])
  return out


def _batch(dataset, size=24, seed=0):
  rng = np.random.default_rng(seed)
  rows = rng.choice(dataset.n_train, size, replace=False)
  mask = np.ones(size, np.float32)
  mask[-4:] = 0.0  # The padding of a last, short batch.
  return data_lib.Batches(
      jnp.asarray(dataset.arrays['train_user'][rows]),
      jnp.asarray(dataset.arrays['train_item'][rows]),
      jnp.asarray(rng.integers(0, dataset.n_items, size)), jnp.asarray(mask))


SETTINGS = [dict(), dict(trans=1, cl_method=1, keep_rate=0.5, temp=0.1,
                         ris_lambda=0.1, ssl_reg=0.01)]


@pytest.mark.parametrize('overrides', SETTINGS)
def test_forward_and_every_loss_term(tiny_dataset, overrides):
  dataset, hp, model, data = _built(tiny_dataset, train_batch_size=1024,
                                    **overrides)
  graphs = diffmm.rebuild_graphs(model, data, hp, jax.random.PRNGKey(1))
  dense = {'adj': _dense(graphs['adj']),
           **{m: _dense(graphs[m][0]) for m in 'vt'}}
  batch = _batch(dataset)
  total, (parts, (users, items)) = diffmm.loss(model, data, batch, None, hp,
                                               graphs)
  want, (w_users, w_items) = _np_losses(_rec_params(model), dataset, dense,
                                        batch, hp)
  np.testing.assert_allclose(_np(users), w_users, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(_np(items), w_items, rtol=1e-4, atol=1e-5)
  for name in ('bpr', 'reg', 'cl'):
    np.testing.assert_allclose(float(parts[name]), want[name], rtol=1e-4,
                               err_msg=name)
  np.testing.assert_allclose(float(total), sum(want.values()), rtol=1e-4)


@pytest.mark.parametrize('overrides', SETTINGS)
def test_gradient_matches_finite_differences(tiny_dataset, overrides):
  dataset, hp, model, data = _built(tiny_dataset, train_batch_size=1024,
                                    **overrides)
  graphs = diffmm.rebuild_graphs(model, data, hp, jax.random.PRNGKey(1))
  dense = {'adj': _dense(graphs['adj']),
           **{m: _dense(graphs[m][0]) for m in 'vt'}}
  batch = _batch(dataset)
  params = _rec_params(model)
  grads = _grad(lambda m: diffmm.loss(m, data, batch, None, hp,
                                      graphs)[0], model)
  rng = np.random.default_rng(0)
  f = lambda p: sum(_np_losses(p, dataset, dense, batch, hp)[0].values())
  for name, value in params.items():
    direction = rng.normal(size=value.shape)
    eps = 1e-5
    plus = {**params, name: value + eps * direction}
    minus = {**params, name: value - eps * direction}
    numeric = (f(plus) - f(minus)) / (2 * eps)
    analytic = float(np.sum(_np(getattr(grads, name)[...]) * direction))
    np.testing.assert_allclose(analytic, numeric, rtol=2e-3, atol=1e-6,
                               err_msg=name)


def _grad(f, model):
  """jax.grad of f(model) as a module of the same structure."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  g = jax.grad(lambda p: f(nnx.merge(graphdef, p, rest)))(params)
  return nnx.merge(graphdef, g, rest)


def _adam_first_step(p, g, lr):
  return p - lr * g / (np.abs(g) + 1e-8)


def test_one_step_of_each_optimizer(tiny_dataset):
  """The denoisers' phase (one batch of all users) with their Adam, then
  one recommender step with its own: each moves only its parameters."""
  dataset, hp, model, data = _built(tiny_dataset, train_batch_size=64,
                                    learning_rate=1e-3)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = diffmm.make_optimizer(hp)
  opt = tx.init(params)
  ctx = family.EpochContext(diffmm.DIFFMM_FAMILY, graphdef, rest, data, hp,
                            tx, epoch=jnp.int32(0))
  key = jax.random.PRNGKey(5)
  start = diffmm.epoch_setup(ctx, params, opt, key)
  assert set(start.parts) == {'diff_v', 'diff_t'}
  assert start.parts['diff_v'].shape == (1,)  # 60 users, one batch
  # By hand: the same users (a permutation: the loss is a mean over rows).
  perm_key, train_key, drop_key = jax.random.split(key, 3)
  users, mask = diffmm._user_batches(dataset.n_users, 64, perm_key)
  x0 = diffusion.dense_rows(data.train_indptr, data.train_items, users[0],
                            dataset.n_items, hp.max_row_len)
  m0 = nnx.merge(graphdef, params, rest)
  feats = diffmm.modal_feats(m0, data, hp)
  g = _grad(lambda m: sum(diffmm.denoiser_losses(
      m, x0, mask[0], m0.item_emb[...], feats,
      jax.random.fold_in(train_key, 0), hp).values()), m0)
  after = nnx.merge(graphdef, start.params, rest)
  for m in 'vt':
    den_g = getattr(g, f'denoise_{m}').arrays()
    for k, v in getattr(m0, f'denoise_{m}').arrays().items():
      np.testing.assert_allclose(
          _np(getattr(after, f'denoise_{m}').arrays()[k]),
          _adam_first_step(_np(v), _np(den_g[k]), 1e-3), rtol=1e-5,
          atol=1e-5)  # 1% of a step: where g ~ eps, g/(|g| + eps) is touchy
  for k, v in _rec_params(m0).items():  # The recommender did not move.
    np.testing.assert_array_equal(_np(getattr(after, k)[...]), v)
  # The rebuilt graphs come from the updated denoisers.
  want = diffmm.rebuild_graphs(after, data, hp, drop_key)
  np.testing.assert_array_equal(np.asarray(start.aux['v'][0].indices),
                                np.asarray(want['v'][0].indices))
  # One recommender step: its Adam, the denoisers fixed; the last step
  # returns forward_MM after the update.
  ctx = ctx._replace(aux=start.aux)
  batch = _batch(dataset)
  out = diffmm.train_step(ctx, start.params, start.opt_state, batch,
                          jax.random.PRNGKey(0), hp.steps_per_epoch - 1)
  g = _grad(lambda m: diffmm.loss(m, data, batch, None, hp,
                                  start.aux)[0], after)
  stepped = nnx.merge(graphdef, out.params, rest)
  for k, v in _rec_params(after).items():
    np.testing.assert_allclose(
        _np(getattr(stepped, k)[...]),
        _adam_first_step(v, _np(getattr(g, k)[...]), 1e-3), rtol=1e-5,
        atol=1e-7)
  for m in 'vt':
    for k, v in getattr(after, f'denoise_{m}').arrays().items():
      np.testing.assert_array_equal(
          _np(getattr(stepped, f'denoise_{m}').arrays()[k]), _np(v))
  assert int(out.opt_state['rec'].inner_state[0].count) == 1
  assert int(out.opt_state['denoise'].inner_state[0].count) == 1
  fresh = diffmm.forward(stepped, data, start.aux, hp)
  for a, b in zip(out.scores, fresh):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize('dataset', ['baby', 'sports', 'tiktok'])
def test_each_dataset_config_runs_the_official_command(dataset):
  import importlib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f'configs.{dataset}').get_config('diffmm')
  for key, value in diffmm.OFFICIAL_COMMANDS[dataset].items():
    assert config[key] == value, (dataset, key)
  # Another model on the same dataset keeps its own settings.
  other = importlib.import_module(f'configs.{dataset}').get_config('lightgcn')
  assert 'keep_rate' not in other and other.epochs != 50


def test_epoch_batches_are_trndata_rows_with_negatives_over_all_items(
    tiny_dataset):
  """TrnData: each training row once a epoch, shuffled; its negative
  uniform over every item id (np.random.randint(args.item)) outside the
  user's training items: items absent from train are negatives too."""
  ds, hp, _, data = _built(tiny_dataset)
  # Five more item ids, in no training row (as TikTok's items seen only
  # in valid/test): MMRec's sampler would never draw them.
  data = data._replace(feat_v=jnp.concatenate(
      [data.feat_v, jnp.zeros((5, data.feat_v.shape[1]))]))
  r = np.pad(_dense_r(ds), ((0, 0), (0, 5)))
  absent = np.flatnonzero(r.sum(0) == 0)
  assert absent.size >= 5
  rows = sorted(zip(*(np.asarray(x).tolist() for x in (data.train_user,
                                                        data.train_item))))
  drawn = set()
  for seed in range(30):
    bt = jax.tree.map(np.asarray, diffmm.epoch_batches(
        jax.random.PRNGKey(seed), data, hp))
    m = bt.mask.reshape(-1) > 0
    users, pos, neg = (x.reshape(-1)[m] for x in (bt.users, bt.pos_items,
                                                   bt.neg_items))
    assert sorted(zip(users.tolist(), pos.tolist())) == rows
    assert np.all(r[users, neg] == 0)
    drawn |= set(neg.tolist())
  assert set(absent.tolist()) <= drawn
