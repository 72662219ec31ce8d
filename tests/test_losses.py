"""Tests for mentor_jax.losses against independent float64 numpy references."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mentor_jax.models.mentor import losses
from mentor_jax.ops import infonce
from mentor_jax.ops import losses as ops_losses

RTOL = 1e-5
ATOL = 1e-6


def _rng(seed=0):
  return np.random.default_rng(seed)


# ---------------------------------------------------------------------------
# numpy references (float64).


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def np_normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_info_nce(a, b, tau):
  a = np_normalize(np.asarray(a, np.float64))
  b = np_normalize(np.asarray(b, np.float64))
  logits = a @ b.T / tau
  # The code's exp / sum / log (no max subtraction), fine for tau >= 0.1.
  den = np.log(np.exp(logits).sum(axis=1))
  return np.mean(den - np.diag(logits))


def np_cos(a, b, eps=1e-8):
  na = np.maximum(np.linalg.norm(a, axis=-1), eps)
  nb = np.maximum(np.linalg.norm(b, axis=-1), eps)
  return (a * b).sum(-1) / (na * nb)


# ---------------------------------------------------------------------------
# BPR and L2.


def test_bpr_log2_and_ln():
  r = _rng(1)
  pos, neg = r.normal(size=64) * 3, r.normal(size=64) * 3
  ref_ln = -np.mean(np_log_sigmoid(pos - neg))
  got2 = ops_losses.bpr_loss(jnp.asarray(pos, jnp.float32),
                         jnp.asarray(neg, jnp.float32))
  gote = ops_losses.bpr_loss(jnp.asarray(pos, jnp.float32),
                         jnp.asarray(neg, jnp.float32), log_base=math.e)
  np.testing.assert_allclose(got2, ref_ln / np.log(2.0), rtol=RTOL)
  np.testing.assert_allclose(gote, ref_ln, rtol=RTOL)
  # The default is log2: it must differ from ln by the factor 1/ln 2.
  assert abs(float(got2) / float(gote) - 1.0 / math.log(2.0)) < 1e-5


def test_bpr_large_margin_is_finite():
  got = ops_losses.bpr_loss(jnp.array([-200.0, 200.0]), jnp.array([0.0, 0.0]))
  np.testing.assert_allclose(got, (200.0 + 0.0) / 2 / math.log(2.0),
                             rtol=1e-5)


def test_bpr_mask_means_over_valid_rows_only():
  r = _rng(2)
  pos, neg = r.normal(size=10), r.normal(size=10)
  mask = np.array([1, 1, 0, 1, 0, 1, 1, 1, 0, 0], np.float32)
  ref = -np.mean(np_log_sigmoid(pos - neg)[mask > 0]) / np.log(2.0)
  # Garbage in the padded rows must not matter.
  pos_pad = np.where(mask > 0, pos, 1e6)
  got = ops_losses.bpr_loss(jnp.asarray(pos_pad, jnp.float32),
                        jnp.asarray(neg, jnp.float32), jnp.asarray(mask))
  np.testing.assert_allclose(got, ref, rtol=RTOL)
  # Gradients of padded rows are zero.
  g = jax.grad(ops_losses.bpr_loss)(jnp.asarray(pos, jnp.float32),
                                jnp.asarray(neg, jnp.float32),
                                jnp.asarray(mask))
  assert np.all(np.asarray(g)[mask == 0] == 0)


def test_l2_reg_duplicates_and_mask():
  r = _rng(3)
  pv, pt = r.normal(size=(20, 64)), r.normal(size=(20, 64))
  wu = r.normal(size=(20, 2))
  users = np.array([3, 3, 3, 5, 7, 0, 3, 19])  # Duplicates kept.
  mask = np.array([1, 1, 1, 1, 0, 1, 1, 0], np.float32)
  lam = 1e-3

  ref_nomask = lam * (np.mean(pv[users] ** 2) + np.mean(pt[users] ** 2)
                      + np.mean(wu ** 2))
  got = losses.l2_reg(jnp.asarray(pv[users], jnp.float32),
                      jnp.asarray(pt[users], jnp.float32),
                      jnp.asarray(wu, jnp.float32), lam)
  np.testing.assert_allclose(got, ref_nomask, rtol=RTOL)

  kept = users[mask > 0]
  ref = lam * (np.sum(pv[kept] ** 2) / (kept.size * 64)
               + np.sum(pt[kept] ** 2) / (kept.size * 64)
               + np.mean(wu ** 2))
  got = losses.l2_reg(jnp.asarray(pv[users], jnp.float32),
                      jnp.asarray(pt[users], jnp.float32),
                      jnp.asarray(wu, jnp.float32), lam, jnp.asarray(mask))
  np.testing.assert_allclose(got, ref, rtol=RTOL)


# ---------------------------------------------------------------------------
# Alignment.


def _four_views(seed=4, n=30, d=16):
  r = _rng(seed)
  # Different scales and offsets so that every pair contributes.
  return [r.normal(loc=m, scale=s, size=(n, d))
          for m, s in ((0.1, 1.0), (-0.3, 0.5), (0.7, 2.0), (0.0, 0.2))]


def test_global_and_per_node_stats_unbiased():
  x = _four_views()[0]
  mean, var = losses.global_stats(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(mean, x.mean(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(var, np.var(x, ddof=1), rtol=RTOL)
  assert not np.isclose(np.var(x, ddof=1), np.var(x), rtol=1e-4)
  mean, var = losses.per_node_stats(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(mean, x.mean(1), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(var, np.var(x, axis=1, ddof=1), rtol=RTOL)


_PAIRS = {1: [('g', 'r')], 2: [('g', 'v'), ('g', 't')],
          3: [('r', 'v'), ('r', 't')], 4: [('v', 't')]}


def np_align(views, levels, stats, dispersion):
  names = dict(zip('rgvt', views))
  total = 0.0
  for lv in levels:
    for a, b in _PAIRS[lv]:
      xa, xb = names[a], names[b]
      if stats == 'global':
        ma, mb = xa.mean(), xb.mean()
        va, vb = np.var(xa, ddof=1), np.var(xb, ddof=1)
      else:
        ma, mb = xa.mean(1), xb.mean(1)
        va, vb = np.var(xa, axis=1, ddof=1), np.var(xb, axis=1, ddof=1)
      if dispersion == 'std':
        va, vb = np.sqrt(va), np.sqrt(vb)
      total += np.mean(np.abs(va - vb) + np.abs(ma - mb))
  return total


@pytest.mark.parametrize('stats', ['global', 'per_node'])
@pytest.mark.parametrize('dispersion', ['variance', 'std'])
@pytest.mark.parametrize('levels', [(1, 2, 3, 4), (1,), (2,), (3,), (4,),
                                    (1, 2), (2, 3, 4)])
def test_align_loss(stats, dispersion, levels):
  views = _four_views()
  got = losses.align_loss(*[jnp.asarray(v, jnp.float32) for v in views],
                          levels=levels, stats=stats, dispersion=dispersion)
  ref = np_align(views, levels, stats, dispersion)
  np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_align_loss_explicit_six_pairs():
  # Written out by hand so the pair table itself is checked.
  r_, g, v, t = _four_views(5)
  st = {k: (x.mean(), np.var(x, ddof=1))
        for k, x in zip('rgvt', (r_, g, v, t))}

  def d(a, b):
    return abs(st[a][1] - st[b][1]) + abs(st[a][0] - st[b][0])

  ref = d('g', 'r') + d('g', 'v') + d('g', 't') + d('r', 'v') + d('r', 't') \
      + d('v', 't')
  got = losses.align_loss(*[jnp.asarray(x, jnp.float32)
                            for x in (r_, g, v, t)])
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  # Level 1 alone is only (g, r).
  got1 = losses.align_loss(*[jnp.asarray(x, jnp.float32)
                             for x in (r_, g, v, t)], levels=(1,))
  np.testing.assert_allclose(got1, d('g', 'r'), rtol=1e-5)


def test_align_loss_rejects_bad_args():
  x = jnp.ones((4, 3))
  with pytest.raises(ValueError):
    losses.align_loss(x, x, x, x, levels=(5,))
  with pytest.raises(ValueError):
    losses.align_loss(x, x, x, x, stats='per_dim')
  with pytest.raises(ValueError):
    losses.align_loss(x, x, x, x, dispersion='mad')


# ---------------------------------------------------------------------------
# Feature masking.


def test_cosine_similarity_matches_torch_formula():
  r = _rng(6)
  a, b = r.normal(size=(9, 7)), r.normal(size=(9, 7))
  a[0] = 0.0  # Zero row: both norms clamped, cosine 0, not NaN.
  b[1] = 1e-10
  got = ops_losses.cosine_similarity(jnp.asarray(a, jnp.float32),
                                 jnp.asarray(b, jnp.float32))
  np.testing.assert_allclose(got, np_cos(a, b), rtol=1e-5, atol=1e-6)


def test_feature_mask_loss():
  r = _rng(7)
  ru, ri = r.normal(size=(12, 8)), r.normal(size=(9, 8))
  keep_u = r.random(ru.shape) > 0.5
  keep_i = r.random(ri.shape) > 0.5
  du, di = ru * keep_u * 2.0, ri * keep_i * 2.0
  w, bias = r.normal(size=(8, 8)), r.normal(size=8)
  mu, mi = ru @ w + bias, ri @ w + bias
  ref = (1 - np_cos(du, mu).mean()) + (1 - np_cos(di, mi).mean())
  args = [jnp.asarray(x, jnp.float32) for x in (ru, ri, du, di, mu, mi)]
  np.testing.assert_allclose(losses.feature_mask_loss(*args), ref, rtol=1e-5)
  # Default (the code): zero gradient everywhere.
  grads = jax.grad(lambda *xs: losses.feature_mask_loss(*xs),
                   argnums=(2, 3, 4, 5))(*args)
  assert all(np.all(np.asarray(g) == 0) for g in grads)
  grads = jax.grad(lambda *xs: losses.feature_mask_loss(
      *xs, stop_gradient=False), argnums=(2, 4))(*args)
  assert all(np.any(np.asarray(g) != 0) for g in grads)


# ---------------------------------------------------------------------------
# InfoNCE.


@pytest.mark.parametrize('tau', [0.1, 0.2, 0.6])
def test_info_nce_naive_vs_numpy(tau):
  r = _rng(8)
  a, b = r.normal(size=(50, 16)), r.normal(size=(50, 16))
  b[:10] = a[:10] + 0.1 * b[:10]  # Some strong positives.
  got = infonce.info_nce(jnp.asarray(a, jnp.float32),
                        jnp.asarray(b, jnp.float32), tau)
  np.testing.assert_allclose(got, np_info_nce(a, b, tau), rtol=1e-5)


def test_info_nce_is_one_directional_and_includes_positive():
  # n = 1: denominator is only the positive, so the loss is exactly 0.
  a = jnp.array([[1.0, 2.0]])
  np.testing.assert_allclose(infonce.info_nce(a, -a, 0.2), 0.0, atol=1e-6)
  np.testing.assert_allclose(infonce.info_nce_fused(a, -a, 0.2), 0.0,
                             atol=1e-6)
  r = _rng(9)
  x, y = r.normal(size=(6, 4)), r.normal(size=(6, 4))
  fwd = np_info_nce(x, y, 0.2)
  assert not np.isclose(fwd, np_info_nce(y, x, 0.2))
  np.testing.assert_allclose(
      infonce.info_nce_fused(jnp.asarray(x, jnp.float32),
                            jnp.asarray(y, jnp.float32), 0.2, block_size=4),
      fwd, rtol=1e-5)


_naive_vg = jax.jit(jax.value_and_grad(infonce.info_nce, argnums=(0, 1, 2)))


@functools.lru_cache(maxsize=None)
def _jitted_pair(block):
  """Jitted value-and-grad of (fused, naive); tau is traced, so one compile."""
  fused = jax.jit(jax.value_and_grad(
      lambda a, b, t: infonce.info_nce_fused(a, b, t, block_size=block),
      argnums=(0, 1, 2)))
  return fused, _naive_vg


def _check_fused_vs_naive(a, b, taus, block):
  fused, naive = _jitted_pair(block)
  for tau in taus:
    (fv, fg), (nv, ng) = fused(a, b, jnp.float32(tau)), naive(
        a, b, jnp.float32(tau))
    np.testing.assert_allclose(fv, nv, rtol=1e-5)
    np.testing.assert_allclose(fv, np_info_nce(a, b, tau), rtol=1e-5)
    for x, y in zip(fg, ng):
      assert np.all(np.isfinite(np.asarray(x)))
      scale = float(jnp.max(jnp.abs(y)))
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize('n,block', [(37, 8), (37, 36), (37, 37), (37, 64),
                                     (100, 7), (129, 32), (5, 1)])
def test_info_nce_fused_matches_naive(n, block):
  r = _rng(n * 31 + block)
  a = r.normal(size=(n, 12)).astype(np.float32)
  b = (0.5 * a + r.normal(size=(n, 12))).astype(np.float32)
  a[3] = 0.0  # A zero row exercises the normalization eps.
  _check_fused_vs_naive(jnp.asarray(a), jnp.asarray(b), (0.1, 0.2, 0.6),
                        block)


def test_info_nce_fused_all_block_sizes():
  n = 6
  r = _rng(10)
  a = jnp.asarray(r.normal(size=(n, 5)), jnp.float32)
  b = jnp.asarray(r.normal(size=(n, 5)), jnp.float32)
  for block in range(1, n + 2):
    _check_fused_vs_naive(a, b, (0.2,), block)


def test_info_nce_fused_finite_difference_temp():
  # d/dtau checked against a float64 central difference of the reference.
  r = _rng(11)
  a, b = r.normal(size=(20, 6)), r.normal(size=(20, 6))
  g = jax.grad(lambda t: infonce.info_nce_fused(
      jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), t,
      block_size=6))(jnp.float32(0.3))
  h = 1e-5
  fd = (np_info_nce(a, b, 0.3 + h) - np_info_nce(a, b, 0.3 - h)) / (2 * h)
  np.testing.assert_allclose(g, fd, rtol=1e-4)


def test_info_nce_fused_small_temperature_is_stable():
  r = _rng(12)
  a = jnp.asarray(r.normal(size=(40, 8)), jnp.float32)
  b = jnp.asarray(r.normal(size=(40, 8)), jnp.float32)
  # tau = 0.005: exp(1/tau) overflows float32 without max subtraction.
  v, g = jax.jit(jax.value_and_grad(
      lambda a: infonce.info_nce_fused(a, b, 0.005, block_size=16)))(a)
  vn = infonce.info_nce(a, b, 0.005)
  assert np.isfinite(float(v)) and np.all(np.isfinite(np.asarray(g)))
  np.testing.assert_allclose(v, vn, rtol=1e-5)


def test_info_nce_fused_traced_temp_does_not_recompile():
  n_traces = []

  @jax.jit
  def f(a, b, t):
    n_traces.append(1)
    return jax.grad(lambda a: infonce.info_nce_fused(a, b, t,
                                                    block_size=4))(a)

  a = jnp.ones((10, 3)) + jnp.arange(30.0).reshape(10, 3)
  for tau in (0.2, 0.4, 0.6):
    f(a, a[::-1], jnp.float32(tau))
  assert len(n_traces) == 1


def test_info_nce_loss_dispatch():
  r = _rng(13)
  a = jnp.asarray(r.normal(size=(11, 4)), jnp.float32)
  b = jnp.asarray(r.normal(size=(11, 4)), jnp.float32)
  ref = np_info_nce(a, b, 0.4)
  for impl in ('fused', 'naive'):
    np.testing.assert_allclose(
        infonce.info_nce_loss(a, b, 0.4, impl=impl, block_size=3), ref,
        rtol=1e-5)
  with pytest.raises(ValueError):
    infonce.info_nce_loss(a, b, 0.4, impl='flash')


def _all_shapes(jaxpr):
  """Shapes of every variable in a jaxpr and all of its sub-jaxprs."""
  shapes = []

  def visit(jp):
    for v in list(jp.invars) + list(jp.constvars):
      shapes.append(tuple(getattr(v.aval, 'shape', ())))
    for eqn in jp.eqns:
      for v in eqn.outvars:
        shapes.append(tuple(getattr(v.aval, 'shape', ())))
      for p in eqn.params.values():
        for sub in (p if isinstance(p, (list, tuple)) else [p]):
          if hasattr(sub, 'jaxpr') and hasattr(sub.jaxpr, 'eqns'):
            visit(sub.jaxpr)
          elif hasattr(sub, 'eqns'):
            visit(sub)

  visit(jaxpr.jaxpr)
  return shapes


def test_info_nce_fused_never_materializes_n_by_n():
  n, d, block = 4096, 64, 256
  a = jax.ShapeDtypeStruct((n, d), jnp.float32)
  fused = jax.value_and_grad(
      lambda a, b, t: infonce.info_nce_fused(a, b, t, block_size=block),
      argnums=(0, 1, 2))
  naive = jax.value_and_grad(infonce.info_nce, argnums=(0, 1, 2))
  t = jax.ShapeDtypeStruct((), jnp.float32)

  # 1) No (n, n) variable anywhere in the traced program (fwd + bwd).
  fused_shapes = _all_shapes(jax.make_jaxpr(fused)(a, a, t))
  assert (n, n) not in fused_shapes
  assert (block, n) in fused_shapes  # The tiles are really blockwise.
  # The check itself can fail: the naive version does have one.
  assert (n, n) in _all_shapes(jax.make_jaxpr(naive)(a, a, t))

  # 2) Compiled temporary memory below one n x n float32 matrix.
  mem = jax.jit(fused).lower(a, a, t).compile().memory_analysis()
  mem_naive = jax.jit(naive).lower(a, a, t).compile().memory_analysis()
  if mem is None or mem_naive is None:
    pytest.skip('memory_analysis unavailable on this backend')
  assert mem_naive.temp_size_in_bytes >= n * n * 4
  assert mem.temp_size_in_bytes < n * n * 4
