"""MENTOR losses as pure `jax.numpy` functions (no Flax).

Every function follows the official code (`Jinfeng-Xu/MENTOR:src/models/
mentor.py`, `calculate_loss`) by default; see `MENTOR_SPEC.md` §2. The paper's
readings are reachable through keyword switches, documented per function.

Contents:
  * `bpr_loss`: log2 BPR over a (padded, masked) batch.
  * `l2_reg`: mean-square regularization of the batch users' preference rows.
  * `global_stats`, `per_node_stats`, `align_loss`: multi-level alignment.
  * `cosine_similarity`, `feature_mask_loss`: the feature-masking term.
  * `info_nce` (naive reference), `info_nce_fused` (blockwise, exact, with a
    recomputing `custom_vjp`) and the dispatcher `info_nce_loss`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mentor_jax import precision as precision_lib

Array = jax.Array

# F.normalize's default eps.
_NORMALIZE_EPS = 1e-12
# F.cosine_similarity's default eps.
_COSINE_EPS = 1e-8


def _masked_mean(x: Array, mask: Array | None) -> Array:
  """Mean of `x` over rows (axis 0), counting only rows with `mask` == 1.

  Batches are padded to a fixed size so that the train step compiles once;
  padded rows must not move the mean. An all-zero mask returns 0 rather than
  NaN so that an empty batch cannot poison the optimizer state.
  """
  if mask is None:
    return jnp.mean(x)
  mask = mask.astype(x.dtype)
  per_row = x.reshape(x.shape[0], -1)
  total = jnp.sum(per_row * mask[:, None])
  count = jnp.sum(mask) * per_row.shape[1]
  return total / jnp.maximum(count, 1.0)


# ---------------------------------------------------------------------------
# BPR and L2.


def bpr_loss(
    pos_scores: Array,
    neg_scores: Array,
    mask: Array | None = None,
    *,
    log_base: float = 2.0,
) -> Array:
  """BPR loss `-mean(log_base sigmoid(pos - neg))` (spec §2.1).

  The official code uses log2 (`log_base=2.0`, the default); the paper's
  Eq. 23 uses ln (`log_base=math.e`). Written with `log_sigmoid` so that large
  negative differences do not underflow to log(0).

  Args:
    pos_scores: [B] scores of the positive items.
    neg_scores: [B] scores of the sampled negatives.
    mask: optional [B] 0/1 weights; the mean is over rows with mask 1 only
      (padding rows of a fixed-size batch are excluded).
    log_base: base of the logarithm.

  Returns:
    Scalar loss.
  """
  per_row = -jax.nn.log_sigmoid(pos_scores - neg_scores)
  return _masked_mean(per_row, mask) / math.log(log_base)


def l2_reg(
    pref_v_rows: Array,
    pref_t_rows: Array,
    weight_u: Array,
    reg_weight: float | Array,
    mask: Array | None = None,
) -> Array:
  """L2 regularization exactly as coded (spec §2.2).

  `reg_weight * (mean(P_v[u_b]**2) + mean(P_t[u_b]**2) + mean(weight_u**2))`.

  Args:
    pref_v_rows: [B, d] raw visual user-preference rows gathered for the
      batch users (duplicates included, as the original gathers per row).
    pref_t_rows: [B, d] the same for the textual encoder.
    weight_u: [U, 2] per-user modality weights; averaged over all entries.
    reg_weight: lambda_reg.
    mask: optional [B] 0/1 row weights; masked rows are excluded from both the
      sum and the count of the two preference means (not from `weight_u`,
      which does not depend on the batch).

  Returns:
    Scalar loss.
  """
  pref = (_masked_mean(jnp.square(pref_v_rows), mask)
          + _masked_mean(jnp.square(pref_t_rows), mask))
  return reg_weight * (pref + jnp.mean(jnp.square(weight_u)))


def l2_reg_norm(
    pref_v_rows: Array,
    pref_t_rows: Array,
    reg_weight: float | Array,
    mask: Array | None = None,
) -> Array:
  """The paper's L2 term, lambda_E (||E_v||^2 + ||E_t||^2) (Eq. 24).

  Read as the batch users' raw preference rows (the same tensors the code
  regularizes), squared L2 norm per row, averaged over the batch rows (the
  batch-mean convention the BPR term also follows); `weight_u` is not
  regularized. It is d = 64 times the two preference terms of `l2_reg`.

  Args:
    pref_v_rows: [B, d] visual preference rows of the batch users.
    pref_t_rows: [B, d] textual preference rows.
    reg_weight: lambda_E.
    mask: optional [B] 0/1 row weights (padding rows excluded).

  Returns:
    Scalar loss.
  """
  sq = (jnp.sum(jnp.square(pref_v_rows), axis=-1)
        + jnp.sum(jnp.square(pref_t_rows), axis=-1))
  return reg_weight * _masked_mean(sq, mask)


# ---------------------------------------------------------------------------
# Alignment.


def global_stats(x: Array) -> tuple[Array, Array]:
  """One mean and one unbiased variance over all entries of `x`.

  Matches `torch.mean(X)` and `torch.var(X)` (divisor numel - 1), which is
  what the official code computes (spec §2.3).

  Args:
    x: array of any shape with at least 2 entries.

  Returns:
    (mean, variance), both scalars.
  """
  return jnp.mean(x), jnp.var(x, ddof=1)


def per_node_stats(x: Array) -> tuple[Array, Array]:
  """Mean and variance per row over the feature (last) dimension.

  This is the paper's Eq. 8 (R^{d x N} -> R^N). The paper does not say which
  variance estimator it means; we use the unbiased one (divisor d - 1) so that
  the per-node switch differs from the code's global statistics only in the
  axis, not in the estimator.

  Args:
    x: [N, d] with d >= 2.

  Returns:
    (mean [N], variance [N]).
  """
  return jnp.mean(x, axis=-1), jnp.var(x, axis=-1, ddof=1)


# Pairs per level, in the code's grouping; letters: r fused, g ID,
# v visual, t textual.
_ALIGN_LEVELS: dict[int, tuple[tuple[str, str], ...]] = {
    1: (('g', 'r'),),
    2: (('g', 'v'), ('g', 't')),
    3: (('r', 'v'), ('r', 't')),
    4: (('v', 't'),),
}

# The paper's levels (Eq. 9-16, Fig. 3) in terms of the code's grouping above:
# L1 standard alignment (v, t); L2 ID indirect guidance (id, v), (id, t);
# L3 ID direct guidance (f, v), (f, t), (f, id). Config `align_levels` uses
# this numbering.
PAPER_ALIGN_LEVELS: dict[int, tuple[int, ...]] = {1: (4,), 2: (2,), 3: (1, 3)}


def align_loss(
    fused: Array,
    ident: Array,
    visual: Array,
    textual: Array,
    *,
    levels: Sequence[int] = (1, 2, 3, 4),
    stats: str = 'global',
    dispersion: str = 'variance',
) -> Array:
  """Multi-level alignment loss, unweighted (spec §2.3).

  Sum over the pairs (a, b) of the selected levels of
  `|disp_a - disp_b| + |mean_a - mean_b|`, with level 1 = (g, r),
  level 2 = (g, v) + (g, t), level 3 = (r, v) + (r, t), level 4 = (v, t).
  The caller multiplies by `align_weight`.

  Args:
    fused: X_r, [N, D] users stacked on items (the general representation).
    ident: X_g, [N, D] the ID view.
    visual: X_v, [N, D].
    textual: X_t, [N, D].
    levels: which levels to include (the paper's ablations use subsets).
    stats: 'global' (code: one mean / unbiased variance per matrix) or
      'per_node' (paper Eq. 8: per-row statistics; the absolute differences
      are averaged over the N rows).
    dispersion: 'variance' (code) or 'std' (the paper writes sigma in
      Eq. 9-16). The gradient of 'std' is infinite where a variance is exactly
      0, which cannot happen for non-degenerate embeddings.

  Returns:
    Scalar loss.
  """
  if stats == 'global':
    stat_fn = global_stats
  elif stats == 'per_node':
    stat_fn = per_node_stats
  else:
    raise ValueError(f"stats must be 'global' or 'per_node', got {stats!r}")
  if dispersion not in ('variance', 'std'):
    raise ValueError(
        f"dispersion must be 'variance' or 'std', got {dispersion!r}")
  bad = [lv for lv in levels if lv not in _ALIGN_LEVELS]
  if bad:
    raise ValueError(f'unknown alignment levels {bad}; valid: 1, 2, 3, 4')

  pairs = [p for lv in sorted(set(levels)) for p in _ALIGN_LEVELS[lv]]
  needed = {name for p in pairs for name in p}
  views = {'r': fused, 'g': ident, 'v': visual, 't': textual}
  # Compute each view's statistics once even if it appears in several pairs.
  moments = {}
  for name in needed:
    mean, var = stat_fn(views[name])
    disp = jnp.sqrt(var) if dispersion == 'std' else var
    moments[name] = (mean, disp)

  total = jnp.zeros((), dtype=fused.dtype)
  for a, b in pairs:
    mean_a, disp_a = moments[a]
    mean_b, disp_b = moments[b]
    # For per-node statistics this is mean over N of the per-node terms;
    # for global statistics the mean of a scalar is the scalar itself.
    total = total + jnp.mean(jnp.abs(disp_a - disp_b)
                             + jnp.abs(mean_a - mean_b))
  return total


# ---------------------------------------------------------------------------
# Feature masking.


def cosine_similarity(a: Array, b: Array, eps: float = _COSINE_EPS) -> Array:
  """Row-wise cosine similarity over the last axis, like F.cosine_similarity.

  `a.b / (max(||a||, eps) * max(||b||, eps))`: each norm is clamped
  separately, as in current PyTorch.

  Args:
    a: [..., d].
    b: [..., d], same shape as `a`.
    eps: lower bound on each norm.

  Returns:
    [...] cosine similarities.
  """
  dot = jnp.sum(a * b, axis=-1)
  # sqrt(max(|x|^2, eps^2)) == max(|x|, eps) with a finite gradient at x = 0.
  na = jnp.sqrt(jnp.maximum(jnp.sum(a * a, axis=-1), eps * eps))
  nb = jnp.sqrt(jnp.maximum(jnp.sum(b * b, axis=-1), eps * eps))
  return dot / (na * nb)


def feature_mask_loss(
    user_emb: Array,
    item_emb: Array,
    dropped_user: Array,
    dropped_item: Array,
    mlp_user: Array,
    mlp_item: Array,
    *,
    stop_gradient: bool = True,
) -> Array:
  """Feature-masking loss, unweighted (spec §2.4, paper Eq. 17).

  `(1 - mean_u cos(drop(R^u), mlp(R^u))) + (1 - mean_i cos(drop(R^i),
  mlp(R^i)))`. Dropout and the MLP are applied by the caller; this function
  only compares the given views.

  Args:
    user_emb: [U, D] R^u, the embeddings both user views were made from. Only
      used to check shapes: the loss itself compares the two views.
    item_emb: [I, D] R^i, likewise.
    dropped_user: [U, D] drop(R^u).
    dropped_item: [I, D] drop(R^i).
    mlp_user: [U, D] mlp(R^u).
    mlp_item: [I, D] mlp(R^i).
    stop_gradient: True (the official code, which computes everything under
      `torch.no_grad()`, so the term has zero gradient and is logged only).
      With False gradients flow into all four views; the caller places any
      stop-gradient the paper's version needs on its inputs.

  Returns:
    Scalar loss.
  """
  for name, view, ref in (('dropped_user', dropped_user, user_emb),
                          ('mlp_user', mlp_user, user_emb),
                          ('dropped_item', dropped_item, item_emb),
                          ('mlp_item', mlp_item, item_emb)):
    if view.shape != ref.shape:
      raise ValueError(f'{name} has shape {view.shape}, expected {ref.shape}')
  views = (dropped_user, mlp_user, dropped_item, mlp_item)
  if stop_gradient:
    views = tuple(jax.lax.stop_gradient(v) for v in views)
  du, mu, di, mi = views
  return ((1.0 - jnp.mean(cosine_similarity(du, mu)))
          + (1.0 - jnp.mean(cosine_similarity(di, mi))))


# ---------------------------------------------------------------------------
# InfoNCE.


def l2_normalize(x: Array, eps: float = _NORMALIZE_EPS) -> Array:
  """Rows divided by max(||row||, eps), like F.normalize(x, dim=-1).

  Written as sqrt(max(|x|^2, eps^2)) so that a zero row has a finite (zero)
  gradient instead of the NaN that differentiating sqrt at 0 would give.
  """
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(sq, eps * eps))


def info_nce(a: Array, b: Array, temp: float | Array,
             *, precision: str = 'float32') -> Array:
  """Naive InfoNCE reference: materializes the n x n logits (spec §2.5).

  `mean_i[-<a_i, b_i>/tau + log sum_j exp(<a_i, b_j>/tau)]` with rows
  L2-normalized; the denominator includes the positive j = i and the loss runs
  one direction (A -> B). Uses a max-subtracted logsumexp: the same value as
  the code's exp/sum/log for tau >= 0.1, and safe for any tau.

  Args:
    a: [n, d] anchor rows.
    b: [n, d] positive rows (row i of `b` is the positive of row i of `a`).
    temp: temperature tau (Python float or traced scalar).
    precision: 'float32' | 'tf32' | 'bf16' (`precision.py`).

  Returns:
    Scalar loss.
  """
  a_hat = l2_normalize(a)
  b_hat = l2_normalize(b)
  logits = precision_lib.matmul(a_hat, b_hat.T, precision) / temp
  pos = jnp.sum(a_hat * b_hat, axis=-1) / temp
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - pos)


def _row_blocks(x: Array, block: int) -> tuple[Array, Array]:
  """Pads the rows of `x` to a multiple of `block` and splits them.

  Returns:
    (blocks [n_blocks, block, d], valid [n_blocks, block] bool): padded rows
    are zero and marked invalid so they can be excluded from every sum.
  """
  n = x.shape[0]
  n_blocks = -(-n // block)
  pad = n_blocks * block - n
  xp = jnp.pad(x, ((0, pad), (0, 0)))
  valid = jnp.arange(n_blocks * block) < n
  return (xp.reshape(n_blocks, block, x.shape[1]),
          valid.reshape(n_blocks, block))


def _block_lse(a_blk: Array, b_hat: Array, temp: Array,
               precision: str) -> tuple[Array, Array]:
  """Logits of one row block against all of `b_hat`, and their row logsumexp.

  The row max is subtracted before exp so that small temperatures cannot
  overflow; the max is treated as a constant (it cancels analytically).
  """
  logits = precision_lib.matmul(a_blk, b_hat.T, precision) / temp
  m = jnp.max(logits, axis=-1, keepdims=True)
  lse = m[:, 0] + jnp.log(jnp.sum(jnp.exp(logits - m), axis=-1))
  return logits, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _info_nce_core(a_hat: Array, b_hat: Array, temp: Array,
                   block: int, precision: str) -> Array:
  """Blockwise InfoNCE on normalized rows: the value alone (one matmul)."""
  n = a_hat.shape[0]
  a_blocks, _ = _row_blocks(a_hat, block)

  def one_block(a_blk):
    _, lse = _block_lse(a_blk, b_hat, temp, precision)
    return lse

  # lax.map is a scan: only one [block, n] logits tile is live at a time.
  lse = jax.lax.map(one_block, a_blocks).reshape(-1)[:n]
  # The positive logit from a row-wise dot: O(n d), no diagonal extraction.
  pos = jnp.sum(a_hat * b_hat, axis=-1) / temp
  return jnp.mean(lse - pos)


def _core_fwd(a_hat, b_hat, temp, block, precision):
  """Value and gradient in one sweep over the row blocks.

  A row block of the logits holds complete rows, so its softmax P is known
  as soon as the block is computed: the gradient tiles are formed right
  there, and the logits are never recomputed. That is 3 matmuls per tile
  (logits, P B, P^T A) instead of 4 for a forward pass that stores only the
  logsumexp and a backward pass that recomputes the logits. The residuals
  are the finished gradients, O(n d).

  With P = softmax(logits) row-wise and logits = A B^T / tau:
    dL/dlogits = (P - I) / n
    dA = (P B - B) / (n tau),  dB = (P^T A - A) / (n tau),
    dtau = -(sum(P * logits) - sum(diag logits)) / (n tau).
  The "- I" parts are O(n d) and done outside the loop.
  """
  n, d = a_hat.shape
  a_blocks, valid = _row_blocks(a_hat, block)

  def step(carry, xs):
    db_acc, pl_acc = carry
    a_blk, valid_blk = xs
    logits = precision_lib.matmul(a_blk, b_hat.T, precision) / temp
    m = jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.exp(logits - m)
    total = jnp.sum(e, axis=-1, keepdims=True)
    lse = m[:, 0] + jnp.log(total[:, 0])
    # Padded rows of A are not rows of the loss: zero their probabilities.
    # (Being zero vectors they would add nothing to dB or dtau anyway; the
    # mask keeps that true whatever the padding value.)
    p = jnp.where(valid_blk[:, None], e * (1.0 / total), 0.0)
    da_blk = precision_lib.matmul(p, b_hat, precision)
    db_acc = db_acc + precision_lib.matmul(p.T, a_blk, precision)
    pl_acc = pl_acc + jnp.sum(p * logits)
    return (db_acc, pl_acc), (lse, da_blk)

  init = (jnp.zeros_like(b_hat), jnp.zeros((), dtype=a_hat.dtype))
  (pb, pl), (lse, pa) = jax.lax.scan(step, init, (a_blocks, valid))
  lse = lse.reshape(-1)[:n]
  pos = jnp.sum(a_hat * b_hat, axis=-1) / temp
  loss = jnp.mean(lse - pos)
  scale = 1.0 / (n * temp)
  da = scale * (pa.reshape(-1, d)[:n] - b_hat)
  db = scale * (pb - a_hat)
  dtemp = -scale * (pl - jnp.sum(pos))
  return loss, (da, db, jnp.reshape(dtemp, temp.shape).astype(temp.dtype))


def _core_bwd(block, precision, res, g):
  del block, precision
  da, db, dtemp = res
  return g * da, g * db, g * dtemp


_info_nce_core.defvjp(_core_fwd, _core_bwd)


def info_nce_fused(
    a: Array,
    b: Array,
    temp: float | Array,
    *,
    block_size: int = 1024,
    precision: str = 'float32',
) -> Array:
  """InfoNCE with the same value as `info_nce`, never forming n x n.

  The rows of `a` are processed in blocks of `block_size` (padded and masked
  to a multiple, so any n works). Under differentiation one sweep over the
  [block, n] logits tiles computes the value and the gradients together
  (`_core_fwd`): dA per block, dB in the scan carry. Peak extra memory is
  O(block_size * n + n * d), like a flash-attention logsumexp.

  The row normalization is applied outside the custom-VJP core, so autodiff
  differentiates F.normalize correctly. `temp` is an ordinary traced
  argument (and receives a gradient): changing tau between grid cells does
  not recompile a jitted caller. `block_size` is static.

  Args:
    a: [n, d] anchor rows.
    b: [n, d] positive rows.
    temp: temperature tau (Python float or traced scalar).
    block_size: rows of `a` per tile; clamped to n.
    precision: 'float32' | 'tf32' | 'bf16' (`precision.py`).

  Returns:
    Scalar loss.
  """
  if a.shape != b.shape or a.ndim != 2:
    raise ValueError(f'a and b must both be [n, d]; got {a.shape}, {b.shape}')
  if block_size < 1:
    raise ValueError(f'block_size must be >= 1, got {block_size}')
  block = min(int(block_size), a.shape[0])
  a_hat = l2_normalize(a)
  b_hat = l2_normalize(b)
  temp = jnp.asarray(temp, dtype=a_hat.dtype)
  return _info_nce_core(a_hat, b_hat, temp, block, precision)


def info_nce_loss(
    a: Array,
    b: Array,
    temp: float | Array,
    *,
    impl: str = 'fused',
    block_size: int = 1024,
    precision: str = 'float32',
) -> Array:
  """InfoNCE dispatcher: `impl='fused'` (default) or `'naive'`.

  Args:
    a: [n, d] anchor rows.
    b: [n, d] positive rows.
    temp: temperature tau.
    impl: 'fused' (`info_nce_fused`) or 'naive' (`info_nce`).
    block_size: tile rows for 'fused'; ignored by 'naive'.
    precision: matmul precision.

  Returns:
    Scalar loss.
  """
  if impl == 'fused':
    return info_nce_fused(a, b, temp, block_size=block_size,
                          precision=precision)
  if impl == 'naive':
    return info_nce(a, b, temp, precision=precision)
  raise ValueError(f"impl must be 'fused' or 'naive', got {impl!r}")
