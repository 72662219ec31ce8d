"""SLMRec against an independent numpy float64 reading of MMRec's code.

The reference (`_reference_*`) is written from MMRec's src/models/
slmrec.py and shares nothing with the port: a dense Â built from the
distinct training pairs, three separate LightGCN towers (the port runs one
192-wide block), torch's CrossEntropyLoss on the real rows only (MMRec's
last batch is shorter; ours is padded and masked), its `fac`, and torch's
Adam(weight_decay) step. Gradients are checked against central
differences of the float64 reference.
"""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import conftest
from mentor_jax import data as data_lib
from mentor_jax import family
from mentor_jax import ranking
from mentor_jax import rundirs
from mentor_jax import train
from mentor_jax.models import slmrec
from mentor_jax.ops import sparse

MMREC_YAML = (pathlib.Path(__file__).resolve().parents[2] / 'ref' / 'MMRec'
              / 'src' / 'configs' / 'model' / 'SLMRec.yaml')


def _built(tiny_dataset, **overrides):
  return conftest.build_baseline('slmrec', tiny_dataset, **overrides)


def _np(x):
  return np.asarray(x, np.float64)


def _params(model) -> dict[str, np.ndarray]:
  _, params, _ = nnx.split(model, nnx.Param, ...)
  return {k: _np(v) for k, v in nnx.to_pure_dict(params).items()}


def _batch(dataset, batch_size=24, n_pad=5, seed=0):
  """Training rows with a repeated positive and `n_pad` padded rows."""
  rng = np.random.default_rng(seed)
  rows = rng.choice(dataset.n_train, batch_size, replace=False)
  users = dataset.arrays['train_user'][rows].copy()
  items = dataset.arrays['train_item'][rows].copy()
  items[1] = items[0]  # An in-batch false negative, as real batches hold.
  mask = np.ones(batch_size, np.float32)
  mask[batch_size - n_pad:] = 0.0
  return data_lib.Batches(
      jnp.asarray(users), jnp.asarray(items),
      jnp.asarray(rng.integers(0, dataset.n_items, batch_size)),
      jnp.asarray(mask))


# ------------------------------------------------------ the numpy reference


def _reference_adj(train_user, train_item, n_users, n_items) -> np.ndarray:
  """MMRec's create_adj_mat('pre'): binary A of the distinct pairs."""
  n = n_users + n_items
  a = np.zeros((n, n))
  a[train_user, n_users + train_item] = 1.0  # Repeats set the same 1.
  a = a + a.T
  d = (a.sum(1) + 1e-8) ** -0.5
  return d[:, None] * a * d[None, :]


def _normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _linear(p, name, x):
  return x @ p[f'{name}_w'] + p[f'{name}_b']


def _reference_forward(p, adj, feat_v, feat_t, n_users, n_layers=3):
  """MMRec's `compute`: three separate LGNs, concat fusion.

  Returns:
    (user [U, d], item [I, d], (i_i, v_i, t_i) item rows of each tower).
  """
  def compute_graph(u_emb, i_emb):
    x = np.concatenate([u_emb, i_emb])
    layers = [x]
    for _ in range(n_layers):
      x = adj @ x
      layers.append(x)
    out = np.mean(layers, axis=0)
    return out[:n_users], out[n_users:]

  v = _linear(p, 'v_dense', _normalize(feat_v))
  t = _linear(p, 't_dense', _normalize(feat_t))
  i_u, i_i = compute_graph(p['user_emb'], p['item_emb'])
  v_u, v_i = compute_graph(p['user_emb'], v)
  t_u, t_i = compute_graph(p['user_emb'], t)
  user = _linear(p, 'user_fusion', np.concatenate([i_u, v_u, t_u], 1))
  item = _linear(p, 'item_fusion', np.concatenate([i_i, v_i, t_i], 1))
  return user, item, (i_i, v_i, t_i)


def _cross_entropy(logits):
  """torch's CrossEntropyLoss(logits, arange(B)), mean reduction."""
  m = logits.max(1, keepdims=True)
  lse = m[:, 0] + np.log(np.exp(logits - m).sum(1))
  return np.mean(lse - np.diag(logits))


def _reference_loss(p, adj, feat_v, feat_t, n_users, users, pos, temp=0.2,
                    ssl_temp=0.1):
  """(infonce, fac) of `calculate_loss` on the batch's REAL rows."""
  user, item, (i_i, v_i, t_i) = _reference_forward(p, adj, feat_v, feat_t,
                                                   n_users)
  u, q = _normalize(user[users]), _normalize(item[pos])
  infonce = _cross_entropy(u @ q.T / temp)
  x_i_iv = _linear(p, 'g_i_iv', i_i[pos])
  x_v_iv = _linear(p, 'g_v_iv', v_i[pos])
  v_loss = _cross_entropy(x_i_iv @ x_v_iv.T / ssl_temp)
  x_iva_ivat = _linear(p, 'g_iva_ivat', _linear(p, 'g_iv_iva', x_i_iv))
  x_t_ivat = _linear(p, 'g_t_ivat', t_i[pos])
  t_loss = _cross_entropy(x_iva_ivat @ x_t_ivat.T / ssl_temp)
  return infonce, v_loss + t_loss


class _Ref:
  """The reference bound to a dataset and a batch (real rows only)."""

  def __init__(self, dataset, batch):
    a = dataset.arrays
    self.n_users = dataset.n_users
    self.adj = _reference_adj(a['train_user'], a['train_item'],
                              dataset.n_users, dataset.n_items)
    self.feat_v, self.feat_t = _np(a['feat_v']), _np(a['feat_t'])
    keep = np.asarray(batch.mask) > 0
    self.users = np.asarray(batch.users)[keep]
    self.pos = np.asarray(batch.pos_items)[keep]

  def forward(self, p):
    return _reference_forward(p, self.adj, self.feat_v, self.feat_t,
                              self.n_users)

  def loss(self, p, alpha, **kw):
    infonce, fac = _reference_loss(p, self.adj, self.feat_v, self.feat_t,
                                   self.n_users, self.users, self.pos, **kw)
    return infonce, alpha * fac


# ---------------------------------------------------------------- the graph


def _to_dense(csr: sparse.Csr) -> np.ndarray:
  out = np.zeros(csr.shape)
  np.add.at(out, (np.asarray(csr.rows), np.asarray(csr.indices)),
            _np(csr.values))
  return out


def test_graph_is_mmrecs_pre_adjacency_over_distinct_pairs():
  # A repeated training row is a repeated entry of the stored pattern;
  # MMRec's csr `nonzero()` sees it once, in A and in the degrees.
  u = np.array([0, 0, 0, 1, 2])
  i = np.array([0, 0, 1, 1, 1])
  n_users, n_items = 3, 2
  rows = np.concatenate([u, i + n_users])
  cols = np.concatenate([i + n_users, u])
  order = np.lexsort((cols, rows))
  rows, cols = rows[order], cols[order]
  indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=5))])
  stored = sparse.csr_from_numpy(indptr, cols, np.ones(len(cols)))
  got = _to_dense(slmrec.slmrec_adj(stored))
  want = _reference_adj(u, i, n_users, n_items)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
  assert got[0, n_users] == pytest.approx(1 / math.sqrt(2 * 1))


def test_graph_on_tiny_equals_reference_and_stored_adj(tiny_dataset):
  b = _built(tiny_dataset)
  a = b.dataset.arrays
  got = slmrec.slmrec_adj(b.data.adj)
  want = _reference_adj(a['train_user'], a['train_item'], b.dataset.n_users,
                        b.dataset.n_items)
  np.testing.assert_allclose(_to_dense(got), want, rtol=3e-7, atol=0)
  # tiny has no repeated rows, so the stored Â (float64 product rounded
  # once) and MMRec's (two float32 factors) differ by float32 rounding only.
  stored = _np(b.data.adj.values)
  assert np.max(np.abs(_np(got.values) - stored) / stored) < 3e-7


# ------------------------------------------------ forward, loss, gradients


def test_forward_equals_three_separate_towers(tiny_dataset):
  b = _built(tiny_dataset)
  p = _params(b.model)
  ref = _Ref(b.dataset, _batch(b.dataset))
  user, item, _ = ref.forward(p)
  got_user, got_item = slmrec.score(b.model, b.data, b.hp)
  np.testing.assert_allclose(got_user, user, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_item, item, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('ssl_alpha,ssl_temp', [(0.01, 0.1), (0.5, 1.0)])
def test_loss_terms_match_reference(tiny_dataset, ssl_alpha, ssl_temp):
  b = _built(tiny_dataset, ssl_alpha=ssl_alpha, ssl_temp=ssl_temp)
  batch = _batch(b.dataset)
  ref = _Ref(b.dataset, batch)
  infonce, fac = ref.loss(_params(b.model), ssl_alpha, ssl_temp=ssl_temp)
  total, (parts, (users, items)) = slmrec.loss(b.model, b.data, batch, None,
                                               b.hp)
  assert set(parts) == {'infonce', 'fac'}
  np.testing.assert_allclose(parts['infonce'], infonce, rtol=1e-5)
  np.testing.assert_allclose(parts['fac'], fac, rtol=1e-5)
  np.testing.assert_allclose(total, infonce + fac, rtol=1e-5)
  # What 'last_step' ranks: this forward's unnormalized fused embeddings.
  user, item, _ = ref.forward(_params(b.model))
  np.testing.assert_allclose(users, user, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(items, item, rtol=1e-5, atol=1e-6)


def test_padded_batch_equals_the_shorter_batch(tiny_dataset):
  b = _built(tiny_dataset)
  batch = _batch(b.dataset, n_pad=5)
  keep = np.asarray(batch.mask) > 0
  short = jax.tree.map(lambda x: x[keep], batch)
  graphdef, params, rest = nnx.split(b.model, nnx.Param, ...)

  def total(p, bt):
    return slmrec.loss(nnx.merge(graphdef, p, rest), b.data, bt, None,
                       b.hp)[0]

  v_pad, g_pad = jax.value_and_grad(total)(params, batch)
  v_short, g_short = jax.value_and_grad(total)(params, short)
  np.testing.assert_allclose(v_pad, v_short, rtol=1e-6)
  for x, y in zip(jax.tree.leaves(g_pad), jax.tree.leaves(g_short)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-8)


def _grads(model, data, batch, hp):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  grads = jax.jit(jax.grad(lambda p: slmrec.loss(
      nnx.merge(graphdef, p, rest), data, batch, None, hp)[0]))(params)
  return {k: _np(v) for k, v in nnx.to_pure_dict(grads).items()}


def test_gradients_match_finite_differences(tiny_dataset):
  b = _built(tiny_dataset, ssl_alpha=0.5)
  batch = _batch(b.dataset)
  ref = _Ref(b.dataset, batch)
  grads = _grads(b.model, b.data, batch, b.hp)
  p0 = _params(b.model)
  rng = np.random.default_rng(0)
  eps = 1e-6
  for name, value in p0.items():
    # Every parameter has a gradient, so torch's Adam decays every one.
    assert np.abs(grads[name]).max() > 0, name
    v = rng.normal(size=value.shape)
    f = lambda s: sum(ref.loss({**p0, name: value + s * v}, 0.5))
    numeric = (f(eps) - f(-eps)) / (2 * eps)
    analytic = float(np.sum(grads[name] * v))
    np.testing.assert_allclose(analytic, numeric, rtol=2e-3, atol=1e-6,
                               err_msg=name)
  # No unused head (upstream's g_a_iva) among the parameters.
  assert not any('g_a_iva' in k for k in p0)


def test_one_step_is_torch_adam_with_coupled_weight_decay(tiny_dataset):
  lr, wd = 1e-2, 1e-4
  b = _built(tiny_dataset, learning_rate=lr)
  assert b.hp.weight_decay == wd
  batch = _batch(b.dataset)
  graphdef, params, rest = nnx.split(b.model, nnx.Param, ...)
  tx = b.family.make_optimizer(b.hp)
  ctx = family.EpochContext(b.family, graphdef, rest, b.data, b.hp, tx)
  out = b.family.train_step(ctx, params, tx.init(params), batch,
                            jax.random.key(0), 0)
  grads = _grads(b.model, b.data, batch, b.hp)
  p0 = _params(b.model)
  pure = lambda tree: {k: _np(v) for k, v in nnx.to_pure_dict(tree).items()}
  got = pure(out.params)
  mu = pure(optax.tree_utils.tree_get(out.opt_state, 'mu'))
  nu = pure(optax.tree_utils.tree_get(out.opt_state, 'nu'))
  for name, p in p0.items():
    g = grads[name] + wd * p  # torch adds wd * p to the gradient.
    # The moments hold the coupled L2 (|wd p| ~ 1e-6 here, far above the
    # float32 noise of the gradient; AdamW's or no decay would miss it).
    np.testing.assert_allclose(mu[name], 0.1 * g, rtol=1e-4, atol=1e-9,
                               err_msg=name)
    np.testing.assert_allclose(nu[name], 1e-3 * g * g, rtol=1e-3,
                               atol=1e-13, err_msg=name)
    # Adam's first step: p - lr g / (|g| + eps). Where |g| is tiny the
    # direction is float32 noise; there only the step's bound holds.
    want = p - lr * g / (np.abs(g) + 1e-8)
    big = np.abs(g) > 1e-4
    np.testing.assert_allclose(got[name][big], want[big], rtol=1e-5,
                               atol=1e-7, err_msg=name)
    assert np.all(np.abs(got[name] - p) <= lr * (1 + 1e-5)), name
  # The scores of the step are the forward before its update (stale).
  before = slmrec.score(b.model, b.data, b.hp)
  for x, y in zip(out.scores, before):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ scoring


def test_raw_score_ranking_is_an_order_of_mmrecs_sigmoid_scores(
    tiny_dataset):
  """MMRec ranks float32 sigmoid(u·i): equal to the dot-product order but
  with ties where the sigmoid rounds to one value (1.0 above ~16.6). Our
  top-K must be one of the lists torch.topk may return for those scores."""
  b = _built(tiny_dataset)
  graphdef, params, rest = nnx.split(b.model, nnx.Param, ...)
  # Large fused weights push scores into the sigmoid's saturation.
  pure = nnx.to_pure_dict(params)
  for name in ('user_fusion_w', 'item_fusion_w'):
    pure[name] = pure[name] * 40.0
  nnx.replace_by_pure_dict(params, pure)
  model = nnx.merge(graphdef, params, rest)
  _, (_, (users, items)) = slmrec.loss(model, b.data, _batch(b.dataset),
                                       None, b.hp)
  indptr, eval_items = b.dataset.split('test')
  mask_indptr, mask_items = b.dataset.split('train')
  top = ranking.rank_users(users, items, indptr, eval_items, mask_indptr,
                           mask_items, k=20)
  # full_sort_predict: float32 scores, float32 sigmoid.
  sig = np.asarray(jax.nn.sigmoid(jnp.matmul(users, items.T,
                                             precision='highest')))
  n_ties = 0
  for row, user in enumerate(top.users):
    s = sig[user].copy()
    s[mask_items[mask_indptr[user]:mask_indptr[user + 1]]] = -np.inf
    listed = s[top.top_items[row]]
    # Non-increasing (up to a last-bit difference of the two matmuls).
    assert np.all(np.diff(listed) <= np.spacing(listed[1:])), user
    rest_items = np.setdiff1d(np.flatnonzero(np.isfinite(s)),
                              top.top_items[row])
    assert rest_items.size == 0 or s[rest_items].max() <= listed[-1], user
    n_ties += int(np.sum(np.diff(listed) == 0))
  assert n_ties > 0  # The saturation ties the test is about did occur.


# ------------------------------------------------------ settings and grid


def _yaml():
  yaml = pytest.importorskip('yaml')
  if not MMREC_YAML.is_file():
    pytest.skip(f'no MMRec checkout ({MMREC_YAML})')
  raw = yaml.safe_load(MMREC_YAML.read_text())

  def value(v):  # PyYAML reads `1e-4` (no dot) as a string.
    if isinstance(v, list):
      return [value(x) for x in v]
    try:
      return float(v) if isinstance(v, str) else v
    except ValueError:
      return v
  return {k: value(v) for k, v in raw.items()}


def test_defaults_are_the_first_cell_of_mmrecs_yaml_grid():
  y = _yaml()
  fam = slmrec.SLMREC_FAMILY
  d = fam.config_defaults()
  for key in y['hyper_parameters']:
    if key == 'reg':  # Read nowhere in MMRec's code: no key here.
      assert key not in fam.config_spec and key not in d['grid']
      continue
    assert d[key] == y[key][0], key
    assert list(d['grid'][key]) == y[key], key
  assert set(d['grid']) == set(y['hyper_parameters']) - {'reg'}
  assert (d['temp'], d['weight_decay'], d['n_layers'],
          d['embedding_size']) == (y['temp'], y['weight_decay'],
                                   y['layer_num'], y['recdim'])
  assert (y['ssl_task'], y['mm_fusion_mode'], y['adj_type'],
          y['init']) == ('FAC', 'concat', 'pre', 'xavier')
  assert d['eval_embeddings'] == 'last_step'


# --------------------------------------------------------------- training


def test_trains_through_the_shared_trainer(tiny_dataset, tmp_path):
  config = conftest.baseline_config('slmrec', tiny_dataset)
  config.train_batch_size = 64  # 6 steps, the last one padded.
  config.eval_batch_size = 32
  config.epochs = 5
  config.learning_rate = 1e-2
  result = train.train_and_evaluate(config, tmp_path)
  log = rundirs.read_metrics(tmp_path)
  assert len(log) == result['epochs_run'] == 5
  infonce = [r['loss']['infonce'] for r in log]
  assert all(math.isfinite(sum(r['loss'].values())) for r in log)
  assert infonce[-1] < 0.95 * infonce[0], infonce
  assert result['valid']['recall@20'] > 0
