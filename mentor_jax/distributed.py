"""Scale-out: many devices and many hosts with `jax.sharding` (issue #8).

One 1-D device mesh with axis 'data' spans every device of every process.
The trainer keeps its single-device code (`train.train_epoch`); this module

  * starts multi-host JAX (`initialize`) from the config or the environment;
  * builds the mesh (`make_mesh`) and the NamedShardings of the train state
    and the constant data (replicated, or the large tables split by rows when
    `config.shard_tables`);
  * re-jits `train_epoch` with explicit in/out shardings under the mesh
    (`Runner.train_epoch`). XLA's SPMD partitioner splits the work; the
    training batch is pinned to the 'data' axis by `constrain_batch`, which
    `train_epoch` calls (a no-op without a mesh);
  * offers the InfoNCE as a `shard_map` over rows of its first operand
    (`info_nce_sharded`, `config.infonce_impl='sharded'`) and, for very large
    graphs, over the batch's unique rows only (`info_nce_batch`,
    `config.infonce_scope='batch'`; not the official semantics);
  * ranks users for full-ranking evaluation device by device
    (`ShardedEvaluator`), with exactly the single-device results.

Every process reads the same .npz and builds the same arrays; global arrays
are made with `jax.make_array_from_callback`, which works whether or not a
device belongs to this process.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mentor_jax import losses
from mentor_jax import metrics as metrics_lib
from mentor_jax import precision as precision_lib

AXIS = 'data'

# Parameter / optimizer-state leaves whose first axis is users or items;
# `shard_tables=True` splits them (and the item features) by rows.
TABLE_NAMES = ('preference', 'weight_u', 'id_feat')
DATA_TABLES = ('feat_v', 'feat_t')


# ---------------------------------------------------------------------------
# Processes and the mesh.


def initialize(config: Any) -> None:
  """Starts multi-host JAX when more than one process is asked for.

  Config keys win over the environment variables JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID. With one process (the default) this
  does nothing, so single-host runs need no coordinator.
  """
  get = lambda k, d: config[k] if k in config else d
  address = get('coordinator_address', '') or os.environ.get(
      'JAX_COORDINATOR_ADDRESS', '')
  n_proc = int(get('num_processes', 0) or os.environ.get(
      'JAX_NUM_PROCESSES', 1))
  proc_id = int(get('process_id', -1))
  if proc_id < 0:
    proc_id = int(os.environ.get('JAX_PROCESS_ID', 0))
  if n_proc <= 1:
    return
  if not address:
    raise ValueError('num_processes > 1 needs coordinator_address (or '
                     'JAX_COORDINATOR_ADDRESS), e.g. host0:1234')
  if jax.distributed.is_initialized():
    return
  jax.distributed.initialize(coordinator_address=address,
                             num_processes=n_proc, process_id=proc_id)


def is_chief() -> bool:
  """Whether this process writes logs (process 0 only)."""
  return jax.process_index() == 0


def make_mesh(mesh_shape: Any = 'auto') -> jax.sharding.Mesh:
  """A 1-D ('data',) mesh over all devices, or the first n of them.

  Args:
    mesh_shape: 'auto' (every device of every process), an int n, or a
      1-tuple (n,). Less than all devices is for benchmarks on one host.

  Returns:
    The mesh, with AxisType.Auto so that jit's partitioner (not
    sharding-in-types) propagates the shardings.
  """
  devices = jax.devices()
  if mesh_shape in ('auto', None, ''):
    n = len(devices)
  else:
    shape = tuple(mesh_shape) if isinstance(mesh_shape, (tuple, list)) else (
        int(mesh_shape),)
    if len(shape) != 1:
      raise ValueError(f'mesh_shape={mesh_shape!r}: only a 1-D data mesh '
                       "is supported ('auto', n or (n,))")
    n = shape[0]
  if not 1 <= n <= len(devices):
    raise ValueError(f'mesh_shape={mesh_shape!r} asks for {n} devices; '
                     f'{len(devices)} are available')
  if n < len(devices) and jax.process_count() > 1:
    raise ValueError('with several processes the mesh must span all devices')
  return jax.make_mesh((n,), (AXIS,), (jax.sharding.AxisType.Auto,),
                       devices=devices[:n])


def _mesh_size() -> int:
  """Size of the 'data' axis of the context mesh (1 without one)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or AXIS not in mesh.axis_names:
    return 1
  return mesh.shape[AXIS]


def constrain_batch(batches: Any) -> Any:
  """Shards an epoch's [n_steps, batch] arrays along the batch axis.

  Called inside `train.train_epoch`; without a context mesh (single device,
  the default) it returns its input, so the trainer's code is unchanged.
  """
  n = _mesh_size()
  if n == 1:
    return batches
  def pin(x):
    if x.ndim < 2 or x.shape[1] % n:
      return x
    return jax.lax.with_sharding_constraint(x, P(None, AXIS))
  return jax.tree.map(pin, batches)


# ---------------------------------------------------------------------------
# Shardings and global arrays.


def _row_spec(x: Any, n: int, shard: bool) -> P:
  # Rows split only when they split evenly: uneven shards would need padding
  # of every table and of its gradient.
  if shard and getattr(x, 'ndim', 0) >= 1 and x.shape[0] % n == 0:
    return P(AXIS)
  return P()


def tree_shardings(mesh: jax.sharding.Mesh, tree: Any,
                   shard_names: Sequence[str] = ()) -> Any:
  """NamedShardings for `tree`: leaves whose path names one of `shard_names`
  are split by rows, everything else is replicated."""
  n = mesh.shape[AXIS]

  def one(path, x):
    name = jax.tree_util.keystr(path)
    shard = any(s in name for s in shard_names)
    return NamedSharding(mesh, _row_spec(x, n, shard))

  return jax.tree_util.tree_map_with_path(one, tree)


def to_global(tree: Any, shardings: Any) -> Any:
  """Places host values (identical on every process) as global arrays."""
  def put(x, sharding):
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding,
                                        lambda index: value[index])
  return jax.tree.map(put, tree, shardings)


# ---------------------------------------------------------------------------
# InfoNCE over row shards.


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _lse_sum(a_hat: jax.Array, b_hat: jax.Array, valid: jax.Array,
             temp: jax.Array, block: int, precision: str) -> jax.Array:
  """sum over valid rows i of logsumexp_j(<a_i, b_j> / temp), blockwise.

  `a_hat` may have fewer rows than `b_hat` (a device's row block); the
  backward pass recomputes the logits tile by tile as `losses` does.
  """
  out, _ = _lse_sum_fwd(a_hat, b_hat, valid, temp, block, precision)
  return out


def _blocks(a_hat, valid, block):
  n, d = a_hat.shape
  n_blocks = -(-n // block)
  pad = n_blocks * block - n
  a = jnp.pad(a_hat, ((0, pad), (0, 0))).reshape(n_blocks, block, d)
  v = jnp.pad(valid, (0, pad)).reshape(n_blocks, block)
  return a, v


def _lse_sum_fwd(a_hat, b_hat, valid, temp, block, precision):
  a_blocks, v_blocks = _blocks(a_hat, valid, block)

  def one(xs):
    a_blk, v_blk = xs
    logits = precision_lib.matmul(a_blk, b_hat.T, precision) / temp
    m = jnp.max(logits, axis=-1, keepdims=True)
    lse = m[:, 0] + jnp.log(jnp.sum(jnp.exp(logits - m), axis=-1))
    return jnp.where(v_blk, lse, 0.0)

  lse = jax.lax.map(one, (a_blocks, v_blocks))
  return jnp.sum(lse), (a_hat, b_hat, valid, temp, lse)


def _lse_sum_bwd(block, precision, res, g):
  a_hat, b_hat, valid, temp, lse = res
  n, d = a_hat.shape
  a_blocks, v_blocks = _blocks(a_hat, valid, block)

  # d lse_i / d logits_ij = P_ij; logits = A B^T / tau.
  def step(carry, xs):
    db, dt = carry
    a_blk, v_blk, lse_blk = xs
    logits = precision_lib.matmul(a_blk, b_hat.T, precision) / temp
    p = jnp.where(v_blk[:, None], jnp.exp(logits - lse_blk[:, None]), 0.0)
    db = db + precision_lib.matmul(p.T, a_blk, precision)
    dt = dt + jnp.sum(p * logits)
    return (db, dt), precision_lib.matmul(p, b_hat, precision)

  # The zero carry takes its device-variance (shard_map's vma type) from
  # `lse`, which depends on both operands, so the scan types agree.
  anchor = 0.0 * lse[0, 0]
  init = (jnp.zeros_like(b_hat) + anchor, anchor)
  (db, dt), da = jax.lax.scan(step, init, (a_blocks, v_blocks, lse))
  da = da.reshape(-1, d)[:n]
  scale = g / temp
  return (scale * da, scale * db, None,
          jnp.reshape(-scale * dt, jnp.shape(temp)).astype(temp.dtype))


_lse_sum.defvjp(_lse_sum_fwd, _lse_sum_bwd)


def info_nce_sharded(a: jax.Array, b: jax.Array, temp: float | jax.Array, *,
                     block_size: int = 1024,
                     precision: str = 'float32') -> jax.Array:
  """`losses.info_nce` with the rows of `a` split over the 'data' axis.

  Each device owns a row block of `a` (and the matching positives of `b`)
  and sees all of `b` for the denominators; the per-row terms are summed
  with a psum. Gradients of the replicated `b` are psum'ed by shard_map's
  transpose. Rows are padded to a multiple of the device count and masked.
  Without a context mesh of more than one device it is `info_nce_fused`.
  """
  n_dev = _mesh_size()
  if n_dev == 1:
    return losses.info_nce_fused(a, b, temp, block_size=block_size,
                                 precision=precision)
  n, d = a.shape
  per = -(-n // n_dev)
  pad = per * n_dev - n
  a_hat = losses.l2_normalize(a)
  b_hat = losses.l2_normalize(b)
  temp = jnp.asarray(temp, a_hat.dtype)
  a_pad = jnp.pad(a_hat, ((0, pad), (0, 0)))
  b_pos = jnp.pad(b_hat, ((0, pad), (0, 0)))
  valid = jnp.arange(per * n_dev) < n
  block = max(1, min(int(block_size), per))

  def local(a_blk, b_pos_blk, valid_blk, b_all, t):
    # The custom VJP returns per-device cotangents for `b_all` and `t`;
    # marking them device-varying makes shard_map transpose the cast into
    # the psum that accumulates them over devices.
    b_all, t = jax.lax.pcast((b_all, t), AXIS, to='varying')
    lse = _lse_sum(a_blk, b_all, valid_blk, t, block, precision)
    pos = jnp.sum(jnp.where(valid_blk, jnp.sum(a_blk * b_pos_blk, -1), 0.0))
    return jax.lax.psum(lse - pos / t, AXIS)

  total = jax.shard_map(
      local, in_specs=(P(AXIS), P(AXIS), P(AXIS), P(), P()), out_specs=P()
  )(a_pad, b_pos, valid, b_hat, temp)
  return total / n


# ---------------------------------------------------------------------------
# InfoNCE over the batch's unique rows (SimGCL practice; not official).


def first_occurrence(ids: jax.Array, mask: jax.Array | None = None
                     ) -> jax.Array:
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


def info_nce_batch(a: jax.Array, b: jax.Array, temp: float | jax.Array,
                   ids: jax.Array, mask: jax.Array | None = None,
                   precision: str = 'float32') -> jax.Array:
  """InfoNCE restricted to the distinct rows `ids` of a batch.

  With R = the distinct valid ids, this is `losses.info_nce(a[R], b[R])`:
  duplicates and padded rows are masked out of both the rows (the mean)
  and the columns (the denominators), so the shapes stay [B, B]. Equal to
  the all-row loss when R is every row. O(B^2) instead of O(n^2).
  """
  keep = first_occurrence(ids, mask)
  a_hat = losses.l2_normalize(a[ids])
  b_hat = losses.l2_normalize(b[ids])
  logits = precision_lib.matmul(a_hat, b_hat.T, precision) / temp
  logits = jnp.where(keep[None, :], logits, -jnp.inf)
  lse = jax.nn.logsumexp(jnp.where(keep[:, None], logits, 0.0), axis=-1)
  pos = jnp.sum(a_hat * b_hat, axis=-1) / temp
  per_row = jnp.where(keep, lse - pos, 0.0)
  return jnp.sum(per_row) / jnp.maximum(jnp.sum(keep), 1)


def info_nce(a: jax.Array, b: jax.Array, temp: float | jax.Array, *,
             impl: str = 'fused', block_size: int = 1024,
             scope: str = 'all', ids: jax.Array | None = None,
             mask: jax.Array | None = None,
             precision: str = 'float32') -> jax.Array:
  """The objective's InfoNCE dispatcher.

  Args:
    a, b: [n, d] the two views (all users or all items).
    temp: temperature.
    impl: 'fused' | 'naive' (`losses.info_nce_loss`) or 'sharded'
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
    raise ValueError(f"infonce_scope must be 'all' or 'batch', got {scope!r}")
  if impl == 'sharded':
    return info_nce_sharded(a, b, temp, block_size=block_size,
                            precision=precision)
  return losses.info_nce_loss(a, b, temp, impl=impl, block_size=block_size,
                              precision=precision)


# ---------------------------------------------------------------------------
# The trainer's view: placement, the sharded epoch, the sharded evaluation.


class Runner:
  """Places the train state and data on a mesh and re-jits the trainer.

  With one device in one process `active` is False and every method returns
  its input unchanged, so single-device runs keep the exact code path of
  `train.py`.
  """

  def __init__(self, mesh: jax.sharding.Mesh, shard_tables: bool = False):
    self.mesh = mesh
    self.shard_tables = shard_tables
    self.replicated = NamedSharding(mesh, P())
    self._shardings = None

  @classmethod
  def from_config(cls, config: Any) -> 'Runner':
    """Initializes multi-host JAX if asked, then builds the mesh."""
    initialize(config)
    mesh = make_mesh(config.get('mesh_shape', 'auto'))
    return cls(mesh, bool(config.get('shard_tables', False)))

  @property
  def active(self) -> bool:
    return self.mesh.size > 1 or jax.process_count() > 1

  def place(self, state: Any, rest: Any, data: Any) -> tuple[Any, Any, Any]:
    """Global arrays: tables split by rows if `shard_tables`, else copies."""
    if not self.active:
      return state, rest, data
    names = TABLE_NAMES if self.shard_tables else ()
    data_names = DATA_TABLES if self.shard_tables else ()
    self._shardings = (tree_shardings(self.mesh, state, names),
                       tree_shardings(self.mesh, rest),
                       tree_shardings(self.mesh, data, data_names))
    return tuple(to_global(t, s) for t, s in zip((state, rest, data),
                                                  self._shardings))

  def wrap_epoch(self, train_epoch: Callable[..., Any]) -> Callable[..., Any]:
    """`train_epoch` with explicit in/out shardings, traced under the mesh.

    The inner jit is inlined into this one; XLA's SPMD partitioner splits
    the batch-dependent work (pinned by `constrain_batch`) and whatever the
    table shardings imply, and inserts the collectives.
    """
    if not self.active:
      return train_epoch
    jitted = self._sharded_epoch(train_epoch)

    def call(state, rest, data, *, graphdef, family, hp):
      with jax.set_mesh(self.mesh):
        return jitted(state, rest, data, graphdef, family, hp)
    return call

  def compile_epoch(self, train_epoch: Callable[..., Any], state: Any,
                    rest: Any, data: Any, *, graphdef: Any, family: Any,
                    hp: Any) -> Callable[[Any, Any, Any], Any]:
    """`wrap_epoch`, compiled ahead of time for these arguments' shapes.

    Returns:
      f(state, rest, data) -> train_epoch's outputs.
    """
    if not self.active:
      return train_epoch.lower(state, rest, data, graphdef=graphdef,
                               family=family, hp=hp).compile()
    with jax.set_mesh(self.mesh):
      compiled = self._sharded_epoch(train_epoch).lower(
          state, rest, data, graphdef, family, hp).compile()

    def call(state, rest, data):
      with jax.set_mesh(self.mesh):
        return compiled(state, rest, data)
    return call

  def _sharded_epoch(self, train_epoch: Callable[..., Any]):
    state_sh, rest_sh, data_sh = self._shardings
    return jax.jit(
        lambda state, rest, data, graphdef, family, hp: train_epoch(
            state, rest, data, graphdef=graphdef, family=family, hp=hp),
        static_argnames=('graphdef', 'family', 'hp'), donate_argnums=0,
        in_shardings=(state_sh, rest_sh, data_sh),
        out_shardings=(state_sh, self.replicated, self.replicated))

  def wrap_scores(self, clean_scores: Callable[..., Any]
                  ) -> Callable[..., Any]:
    """`train.clean_scores` with replicated outputs, under the mesh."""
    if not self.active:
      return clean_scores
    jitted = jax.jit(
        lambda params, rest, data, graphdef, family, hp: clean_scores(
            params, rest, data, graphdef=graphdef, family=family, hp=hp),
        static_argnames=('graphdef', 'family', 'hp'),
        out_shardings=self.replicated)

    def call(params, rest, data, *, graphdef, family, hp):
      with jax.set_mesh(self.mesh):
        return jitted(params, rest, data, graphdef, family, hp)
    return call

  def evaluator(self, dataset: Any, config: Any, default: Any) -> Any:
    """A `ShardedEvaluator` when active, else `default`."""
    if not self.active:
      return default
    return ShardedEvaluator(dataset, config, self.mesh)


class _SplitPlan:
  """One split's users divided into per-device, chunked CSR windows."""

  def __init__(self, mesh, indptr, items, mask_indptr, mask_items,
               chunk_size: int, k: int, n_items: int):
    n_dev = mesh.shape[AXIS]
    self.fn = None
    indptr = np.asarray(indptr, np.int64)
    n_gt_all = np.diff(indptr)
    self.users = np.flatnonzero(n_gt_all > 0).astype(np.int32)
    self.n_gt = n_gt_all[self.users].astype(np.int64)
    self.k, self.k_eff = k, min(k, n_items)
    n = self.users.size
    per = max(1, -(-n // n_dev))
    self.chunk = min(chunk_size, per)
    n_chunks = -(-per // self.chunk)
    self.rows = n_chunks * self.chunk  # users ranked per device (padded)
    groups = [self.users[d * per:(d + 1) * per] for d in range(n_dev)]
    self.counts = [g.size for g in groups]
    users = np.zeros((n_dev, self.rows), np.int32)
    for d, g in enumerate(groups):
      users[d, :g.size] = g  # Padding ranks user 0; it is discarded.
    sentinel = n_chunks * self.chunk
    csrs = []
    for ptr, its in ((indptr, items), (mask_indptr, mask_items)):
      # pylint: disable-next=protected-access
      parts = [metrics_lib._chunk_csr(ptr, its, g, self.chunk, n_chunks)
               for g in groups]
      # One window and one length for all devices: entries past a chunk's
      # rows (other chunks, padding) are dropped by `_rank_chunks`.
      window = max(p.window for p in parts)
      length = max(p.items.size for p in parts) + window
      pad = lambda x, v: np.pad(x, (0, length - x.size), constant_values=v)
      csrs.append((np.stack([pad(p.items, 0) for p in parts]),
                   np.stack([pad(p.pos, sentinel) for p in parts]),
                   np.stack([p.chunk_start for p in parts]), window))
    (gi, gp, gs, self.gt_window), (mi, mp, ms, self.mask_window) = csrs
    sharding = NamedSharding(mesh, P(AXIS))
    self.arrays = to_global((users, gi, gp, gs, mi, mp, ms),
                            (sharding,) * 7)


class ShardedEvaluator:
  """`train.Evaluator` with the users of each split divided over devices.

  Each device ranks its own users against all items with the single-device
  kernel (`metrics._rank_chunks`); the top-K lists are all-gathered so
  every process can compute the metrics. Same results as `Evaluator`.
  """

  def __init__(self, dataset: Any, config: Any, mesh: jax.sharding.Mesh):
    self._mesh = mesh
    self._ks = tuple(config.topk)
    train_ptr, train_items = dataset.split('train')
    self._plans = {
        s: _SplitPlan(mesh, *dataset.split(s), train_ptr, train_items,
                      int(config.eval_batch_size), max(self._ks),
                      dataset.n_items)
        for s in ('valid', 'test')}

  def _rank(self, plan: _SplitPlan, user_emb, item_emb):
    def local(users, gi, gp, gs, mi, mp, ms, u_emb, i_emb):
      top, hits = metrics_lib._rank_chunks(  # pylint: disable=protected-access
          u_emb, i_emb, users[0], gi[0], gp[0], gs[0], mi[0], mp[0], ms[0],
          chunk_size=plan.chunk, k=plan.k_eff, gt_window=plan.gt_window,
          mask_window=plan.mask_window, precision='highest')
      # Replicated results are readable by every process (multi-host).
      return (jax.lax.all_gather(top, AXIS, tiled=True),
              jax.lax.all_gather(hits, AXIS, tiled=True))

    if plan.fn is None:  # One compiled program per split, reused.
      plan.fn = jax.jit(jax.shard_map(
          local, mesh=self._mesh, in_specs=(P(AXIS),) * 7 + (P(), P()),
          # all_gather's result is replicated, which the vma checker
          # does not infer through the gather of top_k indices.
          out_specs=(P(), P()), check_vma=False))
    top, hits = plan.fn(*plan.arrays, user_emb, item_emb)
    n_dev = len(plan.counts)
    top = np.asarray(top).reshape(n_dev, plan.rows, -1)
    hits = np.asarray(hits).reshape(n_dev, plan.rows, -1)
    top = np.concatenate([top[d, :c] for d, c in enumerate(plan.counts)])
    hits = np.concatenate([hits[d, :c] for d, c in enumerate(plan.counts)])
    if plan.k_eff < plan.k:
      hits = np.pad(hits, ((0, 0), (0, plan.k - plan.k_eff)))
    return top, hits

  def __call__(self, user_emb, item_emb) -> dict[str, dict[str, float]]:
    out = {}
    for name, plan in self._plans.items():
      if plan.users.size == 0:
        out[name] = {f'{m}@{k}': float('nan') for k in self._ks
                     for m in ('recall', 'ndcg', 'precision')}
        continue
      _, hits = self._rank(plan, user_emb, item_emb)
      per_user = metrics_lib.topk_metrics(hits, plan.n_gt, self._ks)
      out[name] = {key: float(np.mean(v)) for key, v in per_user.items()}
    return out
