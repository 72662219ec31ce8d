"""MENTOR's own loss terms as pure `jax.numpy` functions (no Flax).

Every function follows the official code (`Jinfeng-Xu/MENTOR:src/models/
mentor.py`, `calculate_loss`) by default; see `MENTOR_SPEC.md` §2. The paper's
readings are reachable through keyword switches, documented per function.
The BPR term is `ops.losses.bpr_loss` and the graph-perturbation term
`ops.infonce.info_nce_loss`, shared with other models.

Contents:
  * `l2_reg`, `l2_reg_norm`: the regularization of the batch users'
    preference rows (code and paper forms).
  * `global_stats`, `per_node_stats`, `align_loss`: multi-level alignment.
  * `feature_mask_loss`: the feature-masking term.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mentor_jax.ops import losses as ops_losses

Array = jax.Array


# ---------------------------------------------------------------------------
# L2.


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
  pref = (ops_losses.masked_mean(jnp.square(pref_v_rows), mask)
          + ops_losses.masked_mean(jnp.square(pref_t_rows), mask))
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
  return reg_weight * ops_losses.masked_mean(sq, mask)


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
  for name in sorted(needed):  # A fixed order: the same program (and
    # compilation-cache key) in every process.
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
  return ((1.0 - jnp.mean(ops_losses.cosine_similarity(du, mu)))
          + (1.0 - jnp.mean(ops_losses.cosine_similarity(di, mi))))
