"""Loss forms and row normalisation shared by the models (no Flax).

* `bpr_loss`: BPR with log_sigmoid and a chosen log base (MENTOR: log2,
  FREEDOM: ln), over a padded, masked batch.
* `mmrec_bpr_loss`, `mmrec_emb_loss`: MMRec's `BPRLoss` and `EmbLoss`
  (src/common/loss.py), used by MF-BPR and LightGCN.
* `l2_normalize`, `cosine_similarity`: F.normalize and F.cosine_similarity.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

# F.normalize's default eps.
_NORMALIZE_EPS = 1e-12
# F.cosine_similarity's default eps.
_COSINE_EPS = 1e-8
# MMRec's BPRLoss adds gamma inside the log: -log(gamma + sigmoid(d)).
BPR_GAMMA = 1e-10


def masked_mean(x: Array, mask: Array | None) -> Array:
  """Mean of `x` over rows (axis 0), counting only rows with `mask` == 1.

  Batches are padded to a fixed size so that the train step compiles once;
  padded rows must not move the mean. An all-zero mask returns 0 rather than
  NaN so that an empty batch cannot poison the optimizer state.
  """
  if mask is None:
    return jnp.mean(x)
  mask = mask.astype(x.dtype)
  per_row = x.reshape(x.shape[0], -1)
  # `where`, not only a product: a padded row's inf (a loss written as
  # upstream writes it) must not become 0 * inf = NaN.
  weighted = per_row * mask[:, None]
  total = jnp.sum(jnp.where(mask[:, None] > 0, weighted, 0.0))
  count = jnp.sum(mask) * per_row.shape[1]
  return total / jnp.maximum(count, 1.0)


def bpr_loss(
    pos_scores: Array,
    neg_scores: Array,
    mask: Array | None = None,
    *,
    log_base: float = 2.0,
    stable: bool = True,
) -> Array:
  """BPR loss `-mean(log_base sigmoid(pos - neg))` (spec §2.1).

  The official code uses log2 (`log_base=2.0`, the default); the paper's
  Eq. 23 uses ln (`log_base=math.e`). Written with `log_sigmoid` so that large
  negative differences do not underflow to log(0); `stable=False` takes the
  log of the float32 sigmoid as written (MMRec's DualGNN), which is +inf
  (and a NaN gradient) once a difference is below about -88, as upstream.

  Args:
    pos_scores: [B] scores of the positive items.
    neg_scores: [B] scores of the sampled negatives.
    mask: optional [B] 0/1 weights; the mean is over rows with mask 1 only
      (padding rows of a fixed-size batch are excluded).
    log_base: base of the logarithm.

  Returns:
    Scalar loss.
  """
  diff = pos_scores - neg_scores
  per_row = -(jax.nn.log_sigmoid(diff) if stable
              else jnp.log(jax.nn.sigmoid(diff)))
  return masked_mean(per_row, mask) / math.log(log_base)


def mmrec_bpr_loss(pos: jax.Array, neg: jax.Array, mask: jax.Array,
                   gamma: float = BPR_GAMMA) -> jax.Array:
  """MMRec's `BPRLoss`: mean over real rows of -ln(gamma + sigmoid(pos-neg)).

  Used by MF-BPR, VBPR and LightGCN. It differs from `losses.bpr_loss` (log2 in
  MENTOR, ln via log_sigmoid in FREEDOM) by the gamma, which floors the
  per-row loss at -ln(1e-10) ~ 23 and so zeroes the gradient of hopeless
  rows; kept for parity.

  Args:
    pos: [B] positive scores.
    neg: [B] negative scores.
    mask: [B] 1 for real rows, 0 for the padding of the last batch.
    gamma: the additive constant.

  Returns:
    Scalar.
  """
  per_row = -jnp.log(gamma + jax.nn.sigmoid(pos - neg))
  return jnp.sum(per_row * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def mmrec_emb_loss(tables: tuple[jax.Array, ...],
                   mask: jax.Array) -> jax.Array:
  """MMRec's `EmbLoss`: sum of Frobenius norms (not squared) / batch size.

  `torch.norm(x, p=2)` of a 2-D batch is the Frobenius norm of the whole
  batch, so the penalty grows like sqrt(B) and is then divided by B (the
  number of real rows; padded rows are masked out of the norms).

  Args:
    tables: [B, d] gathered embedding rows, e.g. (user, pos, neg).
    mask: [B] 1 for real rows.

  Returns:
    Scalar.
  """
  total = 0.0
  for x in tables:
    sq = jnp.sum(jnp.sum(x * x, axis=-1) * mask)
    # A safe sqrt: the gradient of sqrt at 0 is inf, and 0 * inf is NaN.
    positive = sq > 0
    total = total + jnp.where(positive,
                              jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  return total / jnp.maximum(jnp.sum(mask), 1.0)


def l2_normalize(x: Array, eps: float = _NORMALIZE_EPS) -> Array:
  """Rows divided by max(||row||, eps), like F.normalize(x, dim=-1).

  Written as sqrt(max(|x|^2, eps^2)) so that a zero row has a finite (zero)
  gradient instead of the NaN that differentiating sqrt at 0 would give.
  """
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(sq, eps * eps))


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


def mmrec_bpr_with_emb_reg(users: jax.Array, items: jax.Array,
                           user_ids: jax.Array, pos_ids: jax.Array,
                           neg_ids: jax.Array, mask: jax.Array,
                           reg_weight: float) -> dict[str, jax.Array]:
  """MMRec's BPRLoss + reg_weight x EmbLoss on the same gathered rows.

  The loss of MF-BPR and VBPR: the penalty is on the rows that score the
  triples (not on ego embeddings, as LightGCN's is).

  Args:
    users: [U, d] user rows.
    items: [I, d] item rows.
    user_ids, pos_ids, neg_ids: [B] the batch's triples.
    mask: [B] 1 for real rows.
    reg_weight: the EmbLoss weight.

  Returns:
    {'bpr': scalar, 'reg': scalar}, the loss's parts.
  """
  u, p, n = users[user_ids], items[pos_ids], items[neg_ids]
  pos = jnp.sum(u * p, axis=-1)
  neg = jnp.sum(u * n, axis=-1)
  return {'bpr': mmrec_bpr_loss(pos, neg, mask),
          'reg': reg_weight * mmrec_emb_loss((u, p, n), mask)}
