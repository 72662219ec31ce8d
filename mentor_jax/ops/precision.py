"""Matmul precision of the training step: 'float32', 'tf32' or 'bf16'.

`config.matmul_precision` applies to the dense matmuls of training (the item
MLPs and the InfoNCE logits and gradients, which hold nearly all of a step's
FLOPs). Evaluation always scores in strict float32 (`metrics.py`), so the
reported metrics never depend on this setting except through the trained
weights.

* 'float32' (default): strict float32 products, `Precision.HIGHEST`. Set
  explicitly because JAX's default precision on a GPU lets XLA use TF32.
* 'tf32': operands rounded to TF32 (8-bit exponent, 10-bit mantissa),
  products accumulated in float32. Native on GPUs with TF32 tensor cores
  (`DotAlgorithmPreset.TF32_TF32_F32`); elsewhere emulated by rounding the
  operands (round to nearest even) before a float32 matmul, which gives the
  same numerics up to accumulation order, so its effect on metrics can be
  measured on a CPU.
* 'bf16': operands cast to bfloat16, products accumulated and returned in
  float32 (`preferred_element_type`). Native on GPU and TPU. XLA's CPU
  runtime has no bf16 x bf16 -> f32 dot for every shape, so on CPU the
  operands are rounded to bfloat16 and multiplied in float32, which is the
  same arithmetic: a product of two bf16 values is exact in float32.

Parameters, optimizer state, sparse propagation and every reduction stay
float32 in all three modes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MATMUL_PRECISIONS = ('float32', 'tf32', 'bf16')


def check(precision: str) -> str:
  if precision not in MATMUL_PRECISIONS:
    raise ValueError(f'matmul_precision={precision!r}: allowed values are '
                     f'{MATMUL_PRECISIONS}')
  return precision


def round_to_tf32(x: jax.Array) -> jax.Array:
  """float32 values rounded to the nearest TF32 value (ties to even).

  TF32 keeps float32's 8 exponent bits and the top 10 of its 23 mantissa
  bits. Adding half an ulp of the kept part (plus the tie-breaking bit) and
  clearing the low 13 bits rounds the mantissa; a carry into the exponent is
  the correct result. Finite inputs only (the features are checked at load).
  """
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  bias = jnp.uint32(0xFFF) + ((bits >> 13) & jnp.uint32(1))
  rounded = (bits + bias) & jnp.uint32(0xFFFFE000)
  return jax.lax.bitcast_convert_type(rounded, jnp.float32)


def _tf32_native() -> bool:
  return jax.default_backend() == 'gpu'


def _bf16_native() -> bool:
  return jax.default_backend() != 'cpu'


def _prepare(x: jax.Array, precision: str) -> jax.Array:
  if precision == 'bf16':
    # Autodiff through the cast rounds the cotangent to bf16 as well, in
    # both forms, as Flax layers with dtype=bfloat16 do.
    x = x.astype(jnp.bfloat16)
    return x if _bf16_native() else x.astype(jnp.float32)
  if precision == 'tf32' and not _tf32_native():
    # Rounded forward, identity backward (what a cast does): the cotangent
    # flows to x unrounded, as float32 cotangents of a native TF32 matmul.
    return x + jax.lax.stop_gradient(round_to_tf32(x) - x)
  return x


def _algorithm(precision: str):
  if precision == 'tf32' and _tf32_native():
    return jax.lax.DotAlgorithmPreset.TF32_TF32_F32
  if precision == 'bf16' and _bf16_native():
    return jax.lax.Precision.DEFAULT  # bf16 operands: native bf16 products
  return jax.lax.Precision.HIGHEST


def matmul(a: jax.Array, b: jax.Array,
           precision: str = 'float32') -> jax.Array:
  """a @ b at `precision`, returned in float32."""
  check(precision)
  return jnp.matmul(_prepare(a, precision), _prepare(b, precision),
                    precision=_algorithm(precision),
                    preferred_element_type=jnp.float32)


def einsum(subscripts: str, a: jax.Array, b: jax.Array,
           precision: str = 'float32') -> jax.Array:
  """Two-operand `jnp.einsum` at `precision`, returned in float32."""
  check(precision)
  return jnp.einsum(subscripts, _prepare(a, precision),
                    _prepare(b, precision), precision=_algorithm(precision),
                    preferred_element_type=jnp.float32)
