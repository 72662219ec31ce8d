"""InfoNCE, every variant, and the one dispatcher models call (no Flax).

The loss (MENTOR_SPEC §2.5): rows L2-normalized, one direction (A -> B),
the positive j = i inside the denominator,

  L = mean_i [ -<a_i, b_i> / tau + log sum_j exp(<a_i, b_j> / tau) ].

Variants, all with the same value:
  * `info_nce`: the naive reference; materializes the n x n logits.
  * `info_nce_fused`: blockwise over rows of A, exact, never n x n; value
    and gradient in one sweep (`_nce_sum`, a custom VJP).
  * `info_nce_sharded`: the rows of A split over the mesh's 'data' axis
    (`shard_map`); each device runs `_nce_sum` on its row block.
  * `info_nce_batch`: restricted to a batch's distinct rows (SimGCL
    practice, O(B^2); not the official semantics).
`info_nce_loss` picks one from the config's `infonce_impl` and
`infonce_scope`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mentor_jax import mesh as mesh_lib
from mentor_jax.ops import precision as precision_lib
from mentor_jax.ops.losses import l2_normalize

Array = jax.Array

IMPLS = ('fused', 'naive', 'sharded')
SCOPES = ('all', 'batch')


def info_nce(a: Array, b: Array, temp: float | Array,
             *, precision: str = 'float32') -> Array:
  """Naive InfoNCE reference: materializes the n x n logits.

  Uses a max-subtracted logsumexp: the same value as the code's
  exp/sum/log for tau >= 0.1, and safe for any tau.

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


# ---------------------------------------------------------------------------
# The blockwise core: one custom VJP for the single-device and the
# row-sharded loss.


def _row_blocks(x: Array, block: int, valid: Array) -> tuple[Array, Array]:
  """Pads the rows of `x` (and `valid`) to a multiple of `block`, splits them.

  Returns:
    (blocks [n_blocks, block, d], valid [n_blocks, block] bool): padded rows
    are zero and marked invalid so they can be excluded from every sum.
  """
  n = x.shape[0]
  n_blocks = -(-n // block)
  pad = n_blocks * block - n
  xp = jnp.pad(x, ((0, pad), (0, 0)))
  vp = jnp.pad(valid, (0, pad))
  return (xp.reshape(n_blocks, block, x.shape[1]),
          vp.reshape(n_blocks, block))


def _block_lse(a_blk: Array, b_hat: Array, temp: Array,
               precision: str) -> Array:
  """Row logsumexp of one row block's logits against all of `b_hat`.

  The row max is subtracted before exp so that small temperatures cannot
  overflow; the max is treated as a constant (it cancels analytically).
  """
  logits = precision_lib.matmul(a_blk, b_hat.T, precision) / temp
  m = jnp.max(logits, axis=-1, keepdims=True)
  return m[:, 0] + jnp.log(jnp.sum(jnp.exp(logits - m), axis=-1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _nce_sum(a_hat: Array, b_hat: Array, b_pos: Array, valid: Array,
             temp: Array, n_total: int, block: int, precision: str,
             separate_positives: bool) -> Array:
  """sum over valid rows i of [lse_j(<a_i, b_j>/tau) - <a_i, b_pos_i>/tau],
  divided by `n_total`, on normalized rows.

  Args:
    a_hat: [m, d] anchor rows: all of them, or one device's row block.
    b_hat: [n, d] every row of B (the denominators).
    b_pos: [m, d] the positives of `a_hat`'s rows.
    valid: [m] bool, False for padding rows.
    temp: scalar tau.
    n_total: the loss's row count n (the mean's divisor).
    block: rows per logits tile.
    precision: matmul precision.
    separate_positives: False when `b_pos` is `b_hat` itself (`a_hat`
      holds every row: one device), so that the positives' gradient folds
      into B's; True when they are other rows (a device's row block inside
      `shard_map`, or a batch against a whole table).

  Returns:
    Scalar: this block's share of the loss.

  The plain call (no gradient) computes one matmul per tile; see
  `_nce_sum_fwd` for the differentiated one.
  """
  a_blocks, _ = _row_blocks(a_hat, block, valid)
  # lax.map is a scan: only one [block, n] logits tile is live at a time.
  lse = jax.lax.map(lambda a_blk: _block_lse(a_blk, b_hat, temp, precision),
                    a_blocks).reshape(-1)[:a_hat.shape[0]]
  # The positive logit from a row-wise dot: O(n d), no diagonal extraction.
  pos = jnp.sum(a_hat * b_pos, axis=-1) / temp
  return jnp.sum(jnp.where(valid, lse - pos, 0.0)) / n_total


def _nce_sum_fwd(a_hat, b_hat, b_pos, valid, temp, n_total, block, precision,
                 separate_positives):
  """Value and gradient in one sweep over the row blocks.

  A row block of the logits holds complete rows, so its softmax P is known
  as soon as the block is computed: the gradient tiles are formed right
  there, and the logits are never recomputed. That is 3 matmuls per tile
  (logits, P B, P^T A) instead of 4 for a forward pass that stores only the
  logsumexp and a backward pass that recomputes the logits. The residuals
  are the finished gradients, O(n d).

  With P = softmax(logits) row-wise, logits = A B^T / tau and n = n_total:
    dA = (P B - B_pos) / (n tau),  dB = P^T A / (n tau),
    dB_pos = -A / (n tau),  dtau = -(sum(P * logits) - sum(pos)) / (n tau).
  The positive parts are O(n d) and done outside the loop; on one device
  B_pos is B and its part is folded into dB.
  """
  m, d = a_hat.shape
  a_blocks, v_blocks = _row_blocks(a_hat, block, valid)

  def step(carry, xs):
    db_acc, pl_acc = carry
    a_blk, valid_blk = xs
    logits = precision_lib.matmul(a_blk, b_hat.T, precision) / temp
    mx = jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.exp(logits - mx)
    total = jnp.sum(e, axis=-1, keepdims=True)
    lse = mx[:, 0] + jnp.log(total[:, 0])
    # Padded rows of A are not rows of the loss: zero their probabilities.
    # (Being zero vectors they would add nothing to dB or dtau anyway; the
    # mask keeps that true whatever the padding value.)
    p = jnp.where(valid_blk[:, None], e * (1.0 / total), 0.0)
    da_blk = precision_lib.matmul(p, b_hat, precision)
    db_acc = db_acc + precision_lib.matmul(p.T, a_blk, precision)
    pl_acc = pl_acc + jnp.sum(p * logits)
    return (db_acc, pl_acc), (lse, da_blk)

  init = (jnp.zeros_like(b_hat), jnp.zeros((), dtype=a_hat.dtype))
  if separate_positives:
    # Inside shard_map the carries depend on this device's rows: their
    # (shard_map vma) type must say so for the scan's types to agree. Zero
    # taken from this device's rows makes them device-varying (and adds
    # nothing elsewhere).
    anchor = 0.0 * a_hat[0, 0]
    init = jax.tree.map(lambda x: x + anchor, init)
  (pb, pl), (lse, pa) = jax.lax.scan(step, init, (a_blocks, v_blocks))
  lse = lse.reshape(-1)[:m]
  pos = jnp.where(valid, jnp.sum(a_hat * b_pos, axis=-1) / temp, 0.0)
  loss = jnp.sum(jnp.where(valid, lse - pos, 0.0)) / n_total
  scale = 1.0 / (n_total * temp)
  da = scale * (pa.reshape(-1, d)[:m] - b_pos)
  if not separate_positives:
    db, db_pos = scale * (pb - a_hat), None
  else:
    db, db_pos = scale * pb, -scale * jnp.where(valid[:, None], a_hat, 0.0)
  dtemp = -scale * (pl - jnp.sum(pos))
  return loss, (da, db, db_pos,
                jnp.reshape(dtemp, temp.shape).astype(temp.dtype))


def _nce_sum_bwd(n_total, block, precision, separate_positives, res, g):
  del n_total, block, precision, separate_positives
  da, db, db_pos, dtemp = res
  db_pos = None if db_pos is None else g * db_pos
  return g * da, g * db, db_pos, None, g * dtemp


_nce_sum.defvjp(_nce_sum_fwd, _nce_sum_bwd)


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
  (`_nce_sum_fwd`): dA per block, dB in the scan carry. Peak extra memory is
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
  n = a.shape[0]
  block = min(int(block_size), n)
  a_hat = l2_normalize(a)
  b_hat = l2_normalize(b)
  temp = jnp.asarray(temp, dtype=a_hat.dtype)
  return _nce_sum(a_hat, b_hat, b_hat, jnp.ones((n,), bool), temp, n, block,
                  precision, False)


def info_nce_sharded(a: Array, b: Array, temp: float | Array, *,
                     block_size: int = 1024,
                     precision: str = 'float32') -> Array:
  """`info_nce_fused` with the rows of `a` split over the 'data' axis.

  Each device owns a row block of `a` (and the matching positives of `b`)
  and sees all of `b` for the denominators; the per-device shares are
  summed with a psum. Gradients of the replicated `b` are psum'ed by
  shard_map's transpose. Rows are padded to a multiple of the device count
  and masked. Without a context mesh of more than one device it is
  `info_nce_fused`.
  """
  n_dev = mesh_lib.mesh_size()
  if n_dev == 1:
    return info_nce_fused(a, b, temp, block_size=block_size,
                          precision=precision)
  n, _ = a.shape
  per = -(-n // n_dev)
  pad = per * n_dev - n
  a_hat = l2_normalize(a)
  b_hat = l2_normalize(b)
  temp = jnp.asarray(temp, a_hat.dtype)
  a_pad = jnp.pad(a_hat, ((0, pad), (0, 0)))
  b_pos = jnp.pad(b_hat, ((0, pad), (0, 0)))
  valid = jnp.arange(per * n_dev) < n
  block = max(1, min(int(block_size), per))
  axis = mesh_lib.AXIS

  def local(a_blk, b_pos_blk, valid_blk, b_all, t):
    # The custom VJP returns per-device cotangents for `b_all` and `t`;
    # marking them device-varying makes shard_map transpose the cast into
    # the psum that accumulates them over devices.
    b_all, t = jax.lax.pcast((b_all, t), axis, to='varying')
    share = _nce_sum(a_blk, b_all, b_pos_blk, valid_blk, t, n, block,
                     precision, True)
    return jax.lax.psum(share, axis)

  return jax.shard_map(
      local, in_specs=(P(axis), P(axis), P(axis), P(), P()), out_specs=P()
  )(a_pad, b_pos, valid, b_hat, temp)


# ---------------------------------------------------------------------------
# InfoNCE over the batch's unique rows (SimGCL practice; not official).


def first_occurrence(ids: Array, mask: Array | None = None) -> Array:
  """[B] bool: True at the first valid occurrence of each id.

  Static shape: a stable sort puts equal ids next to each other (masked rows
  get an id past every real one), the first of each run is kept.
  """
  ids = ids.astype(jnp.int32)
  if mask is not None:
    ids = jnp.where(mask > 0, ids, jnp.iinfo(jnp.int32).max)
  order = jnp.argsort(ids, stable=True)
  s = ids[order]
  first = jnp.concatenate([jnp.ones((1,), bool), s[1:] != s[:-1]])
  first = first & (s != jnp.iinfo(jnp.int32).max)
  return jnp.zeros_like(first).at[order].set(first)


def info_nce_batch(a: Array, b: Array, temp: float | Array, ids: Array,
                   mask: Array | None = None,
                   precision: str = 'float32') -> Array:
  """InfoNCE restricted to the distinct rows `ids` of a batch.

  With R = the distinct valid ids, this is `info_nce(a[R], b[R])`:
  duplicates and padded rows are masked out of both the rows (the mean)
  and the columns (the denominators), so the shapes stay [B, B]. Equal to
  the all-row loss when R is every row. O(B^2) instead of O(n^2).
  """
  keep = first_occurrence(ids, mask)
  a_hat = l2_normalize(a[ids])
  b_hat = l2_normalize(b[ids])
  logits = precision_lib.matmul(a_hat, b_hat.T, precision) / temp
  logits = jnp.where(keep[None, :], logits, -jnp.inf)
  lse = jax.nn.logsumexp(jnp.where(keep[:, None], logits, 0.0), axis=-1)
  pos = jnp.sum(a_hat * b_hat, axis=-1) / temp
  per_row = jnp.where(keep, lse - pos, 0.0)
  return jnp.sum(per_row) / jnp.maximum(jnp.sum(keep), 1)


# ---------------------------------------------------------------------------
# The dispatcher.


def info_nce_loss(
    a: Array,
    b: Array,
    temp: float | Array,
    *,
    impl: str = 'fused',
    block_size: int = 1024,
    scope: str = 'all',
    ids: Array | None = None,
    mask: Array | None = None,
    precision: str = 'float32',
) -> Array:
  """The InfoNCE a model asks for, by `config.infonce_impl` and `_scope`.

  Args:
    a, b: [n, d] the two views (all users or all items).
    temp: temperature.
    impl: 'fused' (`info_nce_fused`), 'naive' (`info_nce`) or 'sharded'
      (`info_nce_sharded`); used by scope 'all'.
    block_size: row tile of the blockwise implementations.
    scope: 'all' (official: every row) or 'batch' (the batch's distinct
      rows `ids`, padded rows excluded by `mask`).
    ids, mask: [B] batch rows and their 0/1 padding mask (scope 'batch').
    precision: matmul precision (`precision.py`).

  Returns:
    Scalar loss.
  """
  if scope == 'batch':
    if ids is None:
      raise ValueError("infonce_scope='batch' needs the batch's ids")
    return info_nce_batch(a, b, temp, ids, mask, precision)
  if scope != 'all':
    raise ValueError(f'infonce_scope must be one of {SCOPES}, got {scope!r}')
  if impl == 'fused':
    return info_nce_fused(a, b, temp, block_size=block_size,
                          precision=precision)
  if impl == 'naive':
    return info_nce(a, b, temp, precision=precision)
  if impl == 'sharded':
    return info_nce_sharded(a, b, temp, block_size=block_size,
                            precision=precision)
  raise ValueError(f'impl must be one of {IMPLS}, got {impl!r}')


def info_nce_against_all(anchors: Array, positives: Array, candidates: Array,
                         temp: float | Array, *, mask: Array | None = None,
                         block_size: int = 1024,
                         precision: str = 'float32') -> Array:
  """InfoNCE of a batch against every row of a table, summed over the batch.

    sum_b mask_b [ log sum_j exp(<â_b, ĉ_j> / tau) - <â_b, p̂_b> / tau ]

  on L2-normalized rows: LGMRec's `ssl_triple_loss` (anchors and positives
  are the batch's rows of two views, the candidates all rows of the second
  view, so the positive sits in the denominator). Blockwise over the
  anchors with the exact one-sweep gradient of `info_nce_fused`: peak extra
  memory O(block_size * n), never [B, n] at once for B > block_size.

  Args:
    anchors: [B, d].
    positives: [B, d], row b the positive of anchor b.
    candidates: [n, d].
    temp: tau.
    mask: optional [B] 0/1; rows with 0 (batch padding) add nothing.
    block_size: anchor rows per logits tile.
    precision: matmul precision.

  Returns:
    Scalar (a sum, not a mean).
  """
  if anchors.shape != positives.shape or anchors.ndim != 2 or (
      candidates.ndim != 2 or candidates.shape[1] != anchors.shape[1]):
    raise ValueError('anchors and positives must be [B, d] and candidates '
                     f'[n, d]; got {anchors.shape}, {positives.shape}, '
                     f'{candidates.shape}')
  m = anchors.shape[0]
  valid = jnp.ones((m,), bool) if mask is None else mask > 0
  # `_nce_sum`'s anchor gradient (P B - B_pos) is not masked; zeroed rows
  # outside it keep padding rows out of every gradient.
  zero_invalid = lambda x: jnp.where(valid[:, None], x, 0.0)
  a_hat = zero_invalid(l2_normalize(anchors))
  temp = jnp.asarray(temp, dtype=a_hat.dtype)
  return _nce_sum(a_hat, l2_normalize(candidates),
                  zero_invalid(l2_normalize(positives)), valid, temp, 1,
                  min(int(block_size), m), precision, True)
