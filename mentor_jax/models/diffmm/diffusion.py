"""DiffMM's diffusion part: schedule, denoiser, its losses, the reverse pass.

As the official Model.py computes them (`GaussianDiffusion`, `Denoise`):

* schedule: betas from a linear variance ramp noise_scale * [min, max] over
  `steps`, beta_0 forced to 1e-4; all constants in float64, used as float32
  (`_extract_into_tensor(...).float()`);
* denoiser: sinusoidal time embedding (d_emb dims) -> Linear(d_emb, d_emb);
  x -> Dropout(0.5) (training only) -> concat with it -> Linear(I + d_emb,
  H) -> tanh -> Linear(H, I); it predicts x0;
* training loss per row: w_t * mean_items (x0 - x0_hat)^2 with w_t =
  SNR(t-1) - SNR(t) (w_0 = 1), and the graph-consistency term
  mean_d (x0_hat F_m - x0 E_i)^2;
* reverse pass (`p_sample` with sampling_steps=0 and no sampling noise):
  from the clean row, x <- coef1[t] model(x, t) + coef2[t] x for t = T-1..0.

Every function is pure (arrays in, arrays out) and has no Flax in it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DENOISER_DROPOUT = 0.5  # Denoise(dropout=0.5), the official default.


class Schedule(NamedTuple):
  """Float64 numpy constants of `GaussianDiffusion`, indexed by t."""

  betas: np.ndarray
  alphas_cumprod: np.ndarray
  coef1: np.ndarray  # posterior_mean_coef1
  coef2: np.ndarray  # posterior_mean_coef2
  loss_weight: np.ndarray  # SNR(t-1) - SNR(t), 1 at t = 0


def schedule(steps: int = 5, noise_scale: float = 0.1,
             noise_min: float = 1e-4, noise_max: float = 0.02) -> Schedule:
  """`GaussianDiffusion.__init__` with beta_fixed=True (noise_scale > 0)."""
  variance = np.linspace(noise_scale * noise_min, noise_scale * noise_max,
                         steps, dtype=np.float64)
  alpha_bar = 1.0 - variance
  betas = [1.0 - alpha_bar[0]] + [
      min(1.0 - alpha_bar[i] / alpha_bar[i - 1], 0.999)
      for i in range(1, steps)]
  betas = np.array(betas, np.float64)
  betas[0] = 1e-4
  alphas = 1.0 - betas
  cumprod = np.cumprod(alphas)
  prev = np.concatenate([[1.0], cumprod[:-1]])
  coef1 = betas * np.sqrt(prev) / (1.0 - cumprod)
  coef2 = (1.0 - prev) * np.sqrt(alphas) / (1.0 - cumprod)
  snr = cumprod / (1.0 - cumprod)
  # SNR(ts - 1) wraps to the last step at t = 0 before `where` sets 1.
  weight = np.where(np.arange(steps) == 0, 1.0,
                    snr[np.arange(steps) - 1] - snr)
  return Schedule(betas, cumprod, coef1, coef2, weight)


def time_embedding(t: jax.Array, dim: int) -> jax.Array:
  """[B] int steps -> [B, dim]: [cos(t f), sin(t f)] (+ a zero column)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000) * jnp.arange(half, dtype=jnp.float32)
                  / half)
  temp = t[:, None].astype(jnp.float32) * freqs[None]
  emb = jnp.concatenate([jnp.cos(temp), jnp.sin(temp)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


def denoise(p: dict[str, jax.Array], x: jax.Array, t: jax.Array,
            dropout_key: jax.Array | None = None) -> jax.Array:
  """`Denoise.forward` (norm=False, one hidden layer) on rows x [B, I].

  p: emb_w [d, d], emb_b [d], in_w [I + d, H], in_b [H], out_w [H, I],
  out_b [I] (weights as [in, out]). `dropout_key` None is
  mess_dropout=False (the reverse pass).
  """
  d = p['emb_w'].shape[0]
  emb = time_embedding(t, d) @ p['emb_w'] + p['emb_b']
  if dropout_key is not None:
    keep = jax.random.bernoulli(dropout_key, 1.0 - DENOISER_DROPOUT, x.shape)
    x = jnp.where(keep, x / (1.0 - DENOISER_DROPOUT), 0.0)
  n_items = x.shape[1]
  # cat([x, emb]) @ W as two products: the same sum, no [B, I + d] copy.
  h = jnp.tanh(x @ p['in_w'][:n_items] + emb @ p['in_w'][n_items:]
               + p['in_b'])
  return h @ p['out_w'] + p['out_b']


def training_losses(p: dict[str, jax.Array], x0: jax.Array,
                    item_emb: jax.Array, feats: jax.Array, key: jax.Array,
                    sched: Schedule) -> tuple[jax.Array, jax.Array]:
  """`GaussianDiffusion.training_losses`: per-row (diff_loss, gc_loss).

  Args:
    p: the denoiser's parameters.
    x0: [B, I] clean user rows (0/1).
    item_emb: [I, d] the recommender's item table (constant here).
    feats: [I, d] the modality's projected features (constant here).
    key: t, the noise and the dropout are drawn from it.
    sched: the schedule.
  """
  t_key, noise_key, drop_key = jax.random.split(key, 3)
  n_steps = sched.betas.shape[0]
  t = jax.random.randint(t_key, (x0.shape[0],), 0, n_steps)
  noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
  sqrt_ab = jnp.asarray(np.sqrt(sched.alphas_cumprod), jnp.float32)
  sqrt_1mab = jnp.asarray(np.sqrt(1.0 - sched.alphas_cumprod), jnp.float32)
  x_t = sqrt_ab[t][:, None] * x0 + sqrt_1mab[t][:, None] * noise
  out = denoise(p, x_t, t, drop_key)
  mse = jnp.mean((x0 - out) ** 2, axis=1)
  weight = jnp.asarray(sched.loss_weight, jnp.float32)[t]
  gc = jnp.mean((out @ feats - x0 @ item_emb) ** 2, axis=1)
  return weight * mse, gc


def reverse_pass(p: dict[str, jax.Array], x0: jax.Array,
                 sched: Schedule) -> jax.Array:
  """`p_sample(model, x0, steps=0, sampling_noise=False)`: no noise added,
  the posterior mean from t = T-1 down to 0 (unrolled: T is small)."""
  x = x0
  for i in reversed(range(sched.betas.shape[0])):
    t = jnp.full((x.shape[0],), i, jnp.int32)
    x = (np.float32(sched.coef1[i]) * denoise(p, x, t)
         + np.float32(sched.coef2[i]) * x)
  return x


def dense_rows(indptr: jax.Array, items: jax.Array, users: jax.Array,
               n_items: int, max_row_len: int) -> jax.Array:
  """[B, I] 0/1 rows of R for `users`, scattered from the per-user CSR.

  Only the batch's rows exist (never a U x I array); a repeated item is
  set once, as the official (R != 0) does.
  """
  start = indptr[users]
  degree = indptr[users + 1] - start
  j = jnp.arange(max_row_len)
  valid = j[None, :] < degree[:, None]
  cols = items[jnp.clip(start[:, None] + j[None, :], 0, items.shape[0] - 1)]
  rows = jnp.broadcast_to(jnp.arange(users.shape[0])[:, None], cols.shape)
  return jnp.zeros((users.shape[0], n_items), jnp.float32).at[
      rows, cols].max(valid.astype(jnp.float32))


def init_denoiser(key: jax.Array, n_items: int, hidden: int,
                  emb_dim: int) -> dict[str, jax.Array]:
  """`Denoise.init_weights`: W ~ N(0, sqrt(2 / (fan_in + fan_out))),
  biases ~ N(0, 1e-3)."""
  keys = jax.random.split(key, 6)
  def weight(k, d_in, d_out):
    std = math.sqrt(2.0 / (d_in + d_out))
    return std * jax.random.normal(k, (d_in, d_out), jnp.float32)
  bias = lambda k, d: 1e-3 * jax.random.normal(k, (d,), jnp.float32)
  return {'emb_w': weight(keys[0], emb_dim, emb_dim),
          'emb_b': bias(keys[1], emb_dim),
          'in_w': weight(keys[2], n_items + emb_dim, hidden),
          'in_b': bias(keys[3], hidden),
          'out_w': weight(keys[4], hidden, n_items),
          'out_b': bias(keys[5], n_items)}
