"""Reduced-precision matmuls (mentor_jax/ops/precision.py) against numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from mentor_jax import data as data_lib
from mentor_jax.models.mentor import objective
from mentor_jax.ops import infonce
from mentor_jax.ops import precision


def _tf32_reference(x: np.ndarray) -> np.ndarray:
  """Round-to-nearest-even to 11 significant bits, via frexp (float64)."""
  m, e = np.frexp(x.astype(np.float64))  # m in [0.5, 1): 2^11 m has 11 bits
  return np.ldexp(np.round(m * 2.0**11) / 2.0**11, e).astype(np.float32)


def test_round_to_tf32_matches_frexp_reference():
  rng = np.random.default_rng(0)
  x = np.concatenate([
      rng.normal(size=5000) * 10.0 ** rng.integers(-30, 30, 5000),
      # Exact ties: the 14th significant bit set, nothing below it. Both an
      # even and an odd kept mantissa, so ties-to-even is tested both ways.
      np.array([1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, -(2.0 + 2.0**-10)]),
      # Rounds up across a binade: all kept mantissa bits set.
      np.array([2.0 - 2.0**-12, 0.0, -0.0, 1.0]),
  ]).astype(np.float32)
  got = np.asarray(precision.round_to_tf32(jnp.asarray(x)))
  np.testing.assert_array_equal(got, _tf32_reference(x))
  bits = got.view(np.uint32)
  assert np.all(bits & 0x1FFF == 0)  # 13 low mantissa bits cleared
  assert got[5000] == 1.0 and got[5001] == 1.0 + 4 * 2.0**-11


@pytest.mark.parametrize('mode', ['bf16', 'tf32'])
def test_reduced_matmul_is_the_product_of_rounded_operands(mode):
  rng = np.random.default_rng(1)
  a = rng.normal(size=(32, 300)).astype(np.float32)
  b = rng.normal(size=(300, 16)).astype(np.float32)
  if mode == 'bf16':
    # numpy's cast to the bfloat16 type (ml_dtypes), not XLA's.
    rnd = lambda x: x.astype(jnp.bfloat16).astype(np.float64)
  else:
    rnd = lambda x: _tf32_reference(x).astype(np.float64)
  want = rnd(a) @ rnd(b)
  exact = a.astype(np.float64) @ b.astype(np.float64)
  got = np.asarray(precision.matmul(jnp.asarray(a), jnp.asarray(b), mode))
  assert got.dtype == np.float32
  # Equal to the rounded-operand product up to float32 accumulation ...
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)
  # ... and measurably different from the float32 product.
  assert np.abs(got - exact).max() > 10 * np.abs(want - got).max()
  f32 = np.asarray(precision.matmul(jnp.asarray(a), jnp.asarray(b)))
  np.testing.assert_allclose(f32, exact, rtol=0, atol=2e-4)


@pytest.mark.parametrize('mode', ['bf16', 'tf32'])
def test_reduced_precision_gradients_are_close_to_float32(mode):
  rng = np.random.default_rng(2)
  a = jnp.asarray(rng.normal(size=(40, 24)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(40, 24)), jnp.float32)

  def loss(a, b, p):
    return infonce.info_nce_fused(a, b, 0.2, block_size=16, precision=p)

  ref = jax.grad(loss, argnums=(0, 1))(a, b, 'float32')
  got = jax.grad(loss, argnums=(0, 1))(a, b, mode)
  for r, g in zip(ref, got):
    assert np.all(np.isfinite(g))
    scale = np.abs(np.asarray(r)).max()
    err = np.abs(np.asarray(g) - np.asarray(r)).max()
    # bf16 keeps 8 significant bits, tf32 11: relative errors of a few
    # 2^-8 resp. 2^-11, never 0 (the modes do change the numbers).
    bound = {'bf16': 2.0**-4, 'tf32': 2.0**-7}[mode]
    assert 0 < err < bound * scale


def test_unknown_precision_is_rejected(tiny_dataset):
  with pytest.raises(ValueError, match='matmul_precision'):
    precision.matmul(jnp.ones((2, 2)), jnp.ones((2, 2)), 'fp8')
  config = tiny.get_config()
  config.matmul_precision = 'half'
  with pytest.raises(ValueError, match=r"config.matmul_precision='half'"):
    objective.validate_switches(config)


def test_training_loss_under_each_precision(tiny_dataset):
  """The whole loss runs in each mode, near the float32 value."""
  dataset = data_lib.load_dataset(tiny_dataset)
  config = tiny.get_config()
  config.data_npz = str(tiny_dataset)
  data = data_lib.to_device(dataset, config.knn_k)
  model = objective.create_model(config, dataset)
  max_row_len = data_lib.max_row_length(dataset.split('train')[0])
  batches = data_lib.epoch_batches(jax.random.PRNGKey(0), data, 64,
                                   max_row_len)
  batch = jax.tree.map(lambda x: x[0], batches)
  totals = {}
  for mode in precision.MATMUL_PRECISIONS:
    config.matmul_precision = mode
    hp = objective.Hparams.from_config(config, spmm_kernel='csr',
                                       max_row_len=max_row_len)
    total, _ = objective.mentor_loss(model, data, batch,
                                     jax.random.PRNGKey(1), hp)
    totals[mode] = float(total)
  for mode in ('tf32', 'bf16'):
    assert totals[mode] != totals['float32']
    assert abs(totals[mode] - totals['float32']) < 1e-2 * totals['float32']
