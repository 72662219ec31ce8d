"""VBPR, BM3 and LGMRec against numpy re-implementations of MMRec's code,
their gradients against finite differences, and short training runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from flax import nnx

import conftest
from mentor_jax import data as data_lib
from mentor_jax import registry
from mentor_jax import train
from mentor_jax.models import bm3
from mentor_jax.models import lgmrec
from mentor_jax.ops import graph
from mentor_jax.ops import infonce
from mentor_jax import epoch as epoch_lib
from mentor_jax import rundirs

KERNEL = epoch_lib.resolve_kernel('auto')


_config = conftest.baseline_config


def _built(name: str, npz, **overrides):
  """(dataset, hp, model, data) of model `name` on `npz`."""
  b = conftest.build_baseline(name, npz, **overrides)
  return b.dataset, b.hp, b.model, b.data


def _batch(dataset, batch_size=32, seed=0, repeat_user=True):
  rng = np.random.default_rng(seed)
  rows = rng.choice(dataset.n_train, batch_size, replace=False)
  users = dataset.arrays['train_user'][rows].copy()
  items = dataset.arrays['train_item'][rows].copy()
  if repeat_user:  # A repeated (user, item) row, as real batches hold.
    users[1], items[1] = users[0], items[0]
  mask = np.ones(batch_size, np.float32)
  mask[-3:] = 0.0  # Padding rows must not count.
  return data_lib.Batches(
      jnp.asarray(users), jnp.asarray(items),
      jnp.asarray(rng.integers(0, dataset.n_items, batch_size)),
      jnp.asarray(mask))


def _np(x):
  return np.asarray(x, np.float64)


def _dense_norm_adj(dataset) -> np.ndarray:
  """MMRec's get_norm_adj_mat (dok: duplicates once), densely."""
  u, i = dataset.arrays['train_user'], dataset.arrays['train_item']
  n_users, n = dataset.n_users, dataset.n_users + dataset.n_items
  a = np.zeros((n, n))
  a[u, n_users + i] = 1.0
  a[n_users + i, u] = 1.0
  d = (a.sum(1) + 1e-7) ** -0.5
  return d[:, None] * a * d[None, :]


def _layer_mean(adj, x, n_layers):
  layers = [x]
  for _ in range(n_layers):
    layers.append(adj @ layers[-1])
  return np.mean(layers, axis=0)


def _normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _cos(a, b):
  return (a * b).sum(-1) / (np.maximum(np.linalg.norm(a, axis=-1), 1e-8)
                            * np.maximum(np.linalg.norm(b, axis=-1), 1e-8))


def _emb_loss(*xs):
  """MMRec's EmbLoss: sum of Frobenius norms / rows of the last."""
  return sum(np.linalg.norm(x) for x in xs) / len(xs[-1])


def _params(model) -> dict[str, np.ndarray]:
  """The model's parameters as float64 numpy arrays, by name."""
  _, params, _ = nnx.split(model, nnx.Param, ...)
  return {k: _np(v) for k, v in nnx.to_pure_dict(params).items()}


def _grad_check(model, loss_of_model, reference, seed=0, eps=1e-6):
  """jax.grad of the model's loss vs a float64 central difference of the
  numpy reference `reference(params)`, along a random direction of each
  parameter in turn. Returns the gradients by name."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  # Compiled: eager op-by-op dispatch made this the slowest part.
  grads = jax.jit(jax.grad(
      lambda p: loss_of_model(nnx.merge(graphdef, p, rest))))(params)
  grads = nnx.to_pure_dict(grads)
  p0 = _params(model)
  rng = np.random.default_rng(seed)
  for name, value in p0.items():
    v = rng.normal(size=value.shape)
    shifted = lambda s: {**p0, name: value + s * v}
    numeric = (reference(shifted(eps)) - reference(shifted(-eps))) / (2 * eps)
    analytic = float(np.sum(_np(grads[name]) * v))
    np.testing.assert_allclose(analytic, numeric, rtol=2e-3, atol=1e-6,
                               err_msg=name)
  return grads


# ----------------------------------------------------------------- ops ---


def test_interaction_matrix_and_distinct_degrees_match_scipy():
  rng = np.random.default_rng(0)
  n_users, n_items = 7, 5
  users = np.sort(rng.integers(0, n_users - 1, 30))  # The last user: none.
  items = rng.integers(0, n_items, 30)
  order = np.lexsort((items, users))
  users, items = users[order], items[order]  # Duplicates kept.
  indptr = np.concatenate([[0], np.cumsum(np.bincount(users,
                                                       minlength=n_users))])
  r, r_t = jax.jit(graph.interaction_matrix, static_argnums=2)(
      indptr, items, n_items)
  want = sp.coo_matrix((np.ones(30), (users, items)),
                       shape=(n_users, n_items)).toarray()  # Sums dups.
  x = rng.normal(size=(n_items, 3)).astype(np.float32)
  g = rng.normal(size=(n_users, 3)).astype(np.float32)
  from mentor_jax.ops import sparse
  np.testing.assert_allclose(sparse.spmm(r, x, a_t=r_t), want @ x,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sparse.spmm(r_t, g, a_t=r), want.T @ g,
                             rtol=1e-5, atol=1e-6)
  _, vjp = jax.vjp(lambda x: sparse.spmm(r, x, kernel=KERNEL, a_t=r_t), x)
  np.testing.assert_allclose(vjp(g)[0], want.T @ g, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(graph.distinct_row_counts(indptr, items),
                                (want > 0).sum(1))
  assert want.max() > 1  # The data did hold a duplicate.


def test_info_nce_against_all_matches_mmrec_form_and_autodiff():
  rng = np.random.default_rng(1)
  a, p = (rng.normal(size=(20, 6)).astype(np.float32) for _ in range(2))
  c = rng.normal(size=(13, 6)).astype(np.float32)
  mask = np.ones(20, np.float32)
  mask[-4:] = 0.0

  def mmrec(a, p, c):  # ssl_triple_loss, masked rows dropped.
    a, p, c = (_normalize(_np(x)) for x in (a, p, c))
    keep = mask > 0
    pos = np.exp((a * p).sum(1) / 0.2)
    ttl = np.exp(a @ c.T / 0.2).sum(1)
    return -np.log(pos / ttl)[keep].sum()

  f = lambda a, p, c: infonce.info_nce_against_all(
      a, p, c, 0.2, mask=jnp.asarray(mask), block_size=7)
  np.testing.assert_allclose(float(f(a, p, c)), mmrec(a, p, c), rtol=1e-5)

  def naive(a, p, c):
    n = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    a, p, c = n(a), n(p), n(c)
    per = jax.nn.logsumexp(a @ c.T / 0.2, -1) - (a * p).sum(-1) / 0.2
    return jnp.sum(per * mask)
  got = jax.grad(f, argnums=(0, 1, 2))(a, p, c)
  want = jax.grad(naive, argnums=(0, 1, 2))(a, p, c)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
  assert np.abs(got[1][-4:]).max() == 0.0  # Padding rows: no gradient.


# ---------------------------------------------------------------- VBPR ---


def _vbpr_numpy(dataset, P, reg_weight, batch):
  """MMRec's VBPR: ((users, items), (bpr, reg)) in float64."""
  a = dataset.arrays
  feats = np.concatenate([a['feat_t'], a['feat_v']], axis=1)  # Text first.
  items = np.concatenate([P['item_emb'], feats @ P['proj_w'] + P['proj_b']],
                         axis=1)
  users = P['user_emb']
  bt = jax.tree.map(np.asarray, batch)
  keep = bt.mask > 0
  u = users[bt.users][keep]
  p, n = items[bt.pos_items][keep], items[bt.neg_items][keep]
  diff = (u * p).sum(1) - (u * n).sum(1)
  bpr = -np.log(1e-10 + 1 / (1 + np.exp(-diff))).mean()
  return (users, items), (bpr, reg_weight * _emb_loss(u, p, n))


def test_vbpr_scores_loss_and_gradient(tiny_dataset):
  dataset, hp, model, data = _built('vbpr', tiny_dataset, reg_weight=0.1)
  family = registry.get('vbpr')
  P = _params(model)
  assert np.all(P['proj_b'] == 0) and P['user_emb'].shape == (
      dataset.n_users, 128)
  batch = _batch(dataset)
  (want_u, want_i), (bpr, reg) = _vbpr_numpy(dataset, P, 0.1, batch)
  users, items = family.score(model, data, hp)
  np.testing.assert_allclose(items, want_i, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(users, model.user_emb[...])

  total, (parts, _) = family.loss(model, data, batch, None, hp)
  np.testing.assert_allclose(float(parts['bpr']), bpr, rtol=1e-5)
  np.testing.assert_allclose(float(parts['reg']), reg, rtol=1e-5)
  np.testing.assert_allclose(float(total), bpr + reg, rtol=1e-5)
  _grad_check(model, lambda m: family.loss(m, data, batch, None, hp)[0],
              lambda P: sum(_vbpr_numpy(dataset, P, 0.1, batch)[1]))


# ----------------------------------------------------------------- BM3 ---


def _bm3_numpy(dataset, P, hp, batch, masks, P_target=None):
  """MMRec's BM3: ((scored users, items), parts) in float64. masks: the
  0/1 dropout masks of the (u, i, t, v) target rows, or None. The targets
  come from `P_target` (default P): the stop-gradient, for the finite
  differences."""
  n_users = dataset.n_users
  adj = _dense_norm_adj(dataset)
  bt = jax.tree.map(np.asarray, batch)

  def embed(P):
    x = np.concatenate([P['user_emb'], P['item_emb']])
    out = _layer_mean(adj, x, hp.n_layers)
    users, items = out[:n_users], out[n_users:] + P['item_emb']
    t = P['feat_t'] @ P['proj_t_w'] + P['proj_t_b']
    v = P['feat_v'] @ P['proj_v_w'] + P['proj_v_b']
    return users, items, [users[bt.users], items[bt.pos_items],
                          t[bt.pos_items], v[bt.pos_items]]

  users, items, (u, i, t, v) = embed(P)
  targets = embed(P if P_target is None else P_target)[2]
  if masks is not None:
    targets = [x * m / (1 - hp.dropout) for x, m in zip(targets, masks)]
  u_tg, i_tg, t_tg, v_tg = targets
  pred = lambda z: z @ P['pred_w'] + P['pred_b']
  keep = bt.mask > 0
  c = lambda a, b: 1 - _cos(a[keep], b[keep]).mean()
  rec = c(pred(u), i_tg) + c(pred(i), u_tg)
  reg = (np.linalg.norm(users) + np.linalg.norm(items)) / len(items)
  cl = (c(pred(t), i_tg) + c(pred(t), t_tg) + c(pred(v), i_tg)
        + c(pred(v), v_tg))
  return (pred(users), pred(items)), {
      'rec': rec, 'reg': hp.reg_weight * reg, 'cl': hp.cl_weight * cl}


@pytest.mark.parametrize('n_layers,dropout', [(1, 0.0), (2, 0.5)])
def test_bm3_scores_loss_and_gradient(tiny_dataset, n_layers, dropout):
  dataset, hp, model, data = _built('bm3', tiny_dataset, n_layers=n_layers,
                                    dropout=dropout)
  batch = _batch(dataset)
  key = jax.random.PRNGKey(5)
  masks = None
  if dropout:
    # The masks the loss draws: the same keys, applied to ones.
    keys = jax.random.split(key, 4)
    ids = (batch.users, batch.pos_items, batch.pos_items, batch.pos_items)
    masks = [np.asarray(bm3.dropout_rows(k, jnp.ones((32, 64)), i, dropout))
             * (1 - dropout) for k, i in zip(keys, ids)]
  P = _params(model)
  (want_u, want_i), want = _bm3_numpy(dataset, P, hp, batch, masks)
  users, items = bm3.score(model, data, hp)
  np.testing.assert_allclose(users, want_u, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(items, want_i, rtol=1e-4, atol=1e-5)
  total, (parts, _) = bm3.loss(model, data, batch, key, hp)
  for name in want:
    np.testing.assert_allclose(float(parts[name]), want[name], rtol=1e-4,
                               atol=1e-6, err_msg=name)
  np.testing.assert_allclose(float(total), sum(want.values()), rtol=1e-4)
  grads = _grad_check(
      model, lambda m: bm3.loss(m, data, batch, key, hp)[0],
      lambda Q: sum(_bm3_numpy(dataset, Q, hp, batch, masks,
                               P_target=P)[1].values()))
  # Trainable raw features, as from_pretrained(freeze=False).
  assert np.abs(grads['feat_v']).max() > 0


def test_bm3_dropout_rows_is_a_per_id_table_mask():
  x = jnp.ones((4000, 8))
  ids = jnp.asarray(np.r_[np.arange(3000), np.arange(1000)])
  out = np.asarray(bm3.dropout_rows(jax.random.PRNGKey(0), x, ids, 0.3))
  assert set(np.unique(out)) <= {0.0, np.float32(1 / 0.7)}
  assert abs((out == 0).mean() - 0.3) < 0.01
  np.testing.assert_array_equal(out[3000:], out[:1000])  # Same id, same.
  assert not np.array_equal(out[:1000], out[1000:2000])
  np.testing.assert_array_equal(bm3.dropout_rows(None, x, ids, 0.0), x)


# -------------------------------------------------------------- LGMRec ---


def _lgmrec_numpy(dataset, P, hp, noise, batch):
  """MMRec's LGMRec forward and calculate_loss in float64 with the given
  Gumbel noise and dropout multipliers: ((users, items), parts)."""
  a = dataset.arrays
  n_users = dataset.n_users
  r = sp.coo_matrix((np.ones(dataset.n_train),
                     (a['train_user'], a['train_item'])),
                    shape=(n_users, dataset.n_items)).toarray()
  inv_deg = 1 / ((r > 0).sum(1) + 1e-7)
  adj = _dense_norm_adj(dataset)
  ego = np.concatenate([P['user_emb'], P['item_emb']])
  cge = _layer_mean(adj, ego, hp.n_ui_layers)
  g = [_np(x) for x in noise.gumbel]
  k = [_np(x) for x in noise.keep]

  def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)

  def modality(feat, proj, hyper, j):
    feat = _np(feat)
    item_x = feat @ proj
    x = np.concatenate([(r @ item_x) * inv_deg[:, None], item_x])
    for _ in range(hp.n_mm_layers):
      x = adj @ x
    il = feat @ hyper
    ih = softmax((il + g[j]) / 0.2) * k[j]
    uh = softmax((r @ il + g[j + 1]) / 0.2) * k[j + 1]
    i_ret = cge[n_users:]
    for _ in range(hp.n_hyper_layer):
      lat = ih.T @ i_ret
      i_ret, u_ret = ih @ lat, uh @ lat
    return x, u_ret, i_ret

  mv, uv, iv = modality(a['feat_v'], P['proj_v'], P['hyper_v'], 0)
  mt, ut, it = modality(a['feat_t'], P['proj_t'], P['hyper_t'], 2)
  ghe = np.concatenate([uv + ut, iv + it])
  out = cge + _normalize(mv) + _normalize(mt) + hp.alpha * _normalize(ghe)
  users, items = out[:n_users], out[n_users:]

  bt = jax.tree.map(np.asarray, batch)
  keep = bt.mask > 0
  us, ps, ns = bt.users[keep], bt.pos_items[keep], bt.neg_items[keep]
  u, p, n = users[us], items[ps], items[ns]
  diff = (u * p).sum(1) - (u * n).sum(1)
  bpr = -np.mean(-np.logaddexp(0, -diff))

  def ssl(e1, e2, e_all):
    e1, e2, e_all = _normalize(e1), _normalize(e2), _normalize(e_all)
    pos = np.exp((e1 * e2).sum(1) / 0.2)
    ttl = np.exp(e1 @ e_all.T / 0.2).sum(1)
    return -np.log(pos / ttl).sum()

  hcl = ssl(uv[us], ut[us], ut) + ssl(iv[ps], it[ps], it)
  return (users, items), {'bpr': bpr, 'hcl': hp.cl_weight * hcl,
                          'reg': hp.reg_weight * _emb_loss(u, p, n)}


@pytest.mark.parametrize('n_hyper_layer', [1, 2])
def test_lgmrec_forward_loss_and_gradient(tiny_dataset, n_hyper_layer):
  # Weights large enough that every term shows in the total.
  dataset, hp, model, data = _built(
      'lgmrec', tiny_dataset, n_hyper_layer=n_hyper_layer, cl_weight=0.1,
      reg_weight=0.1)
  batch = _batch(dataset)
  key = jax.random.PRNGKey(3)
  n_users, n_items = dataset.n_users, dataset.n_items
  # The noise the loss draws from `key`: dropout on (training).
  noise = lgmrec.draw_noise(key, n_users, n_items, hp.hyper_num,
                            hp.keep_rate)
  assert any(float(jnp.min(m)) == 0.0 for m in noise.keep)
  P = _params(model)
  (want_u, want_i), want = _lgmrec_numpy(dataset, P, hp, noise, batch)
  total, (parts, (users, items)) = lgmrec.loss(model, data, batch, key, hp)
  np.testing.assert_allclose(users, want_u, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(items, want_i, rtol=1e-4, atol=1e-5)
  for name in want:
    np.testing.assert_allclose(float(parts[name]), want[name], rtol=1e-4,
                               err_msg=name)
  np.testing.assert_allclose(float(total), sum(want.values()), rtol=1e-4)

  # Scoring: no dropout, Gumbel noise from the fixed key, deterministic.
  score_noise = lgmrec.draw_noise(jax.random.PRNGKey(0), n_users, n_items,
                                  hp.hyper_num, None)
  (want_u, want_i), _ = _lgmrec_numpy(dataset, P, hp, score_noise, batch)
  users, items = lgmrec.score(model, data, hp)
  np.testing.assert_allclose(users, want_u, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(items, want_i, rtol=1e-4, atol=1e-5)

  grads = _grad_check(
      model, lambda m: lgmrec.loss(m, data, batch, key, hp)[0],
      lambda Q: sum(_lgmrec_numpy(dataset, Q, hp, noise, batch)[1].values()))
  for name in ('hyper_v', 'hyper_t', 'proj_v', 'proj_t'):
    assert np.abs(grads[name]).max() > 0, name


def test_lgmrec_rejects_feat_dim_unlike_embedding_size(tiny_dataset):
  config = _config('lgmrec', tiny_dataset)
  config.feat_embed_dim = 32
  with pytest.raises(ValueError, match='feat_embed_dim=32'):
    lgmrec.create_model(config, data_lib.load_dataset(tiny_dataset))


# ------------------------------------------------------------ training ---


@pytest.mark.parametrize('model', ['vbpr', 'bm3', 'lgmrec'])
def test_trains_through_the_shared_trainer(tiny_dataset, tmp_path, model):
  config = _config(model, tiny_dataset)
  config.train_batch_size = 64
  config.eval_batch_size = 32
  config.epochs = 6
  config.learning_rate = 1e-2  # Few steps per epoch on 60 users.
  result = train.train_and_evaluate(config, tmp_path)
  log = rundirs.read_metrics(tmp_path)
  assert len(log) == result['epochs_run'] == 6
  total = [sum(r['loss'].values()) for r in log]
  assert all(np.isfinite(total)), total
  assert total[-1] < 0.9 * total[0], total
  assert result['valid']['recall@20'] > 0
