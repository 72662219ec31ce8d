"""Scale-out: many devices and many hosts with `jax.sharding` (issue #8).

The trainer keeps its single-device code (`epoch.py`); this module

  * starts multi-host JAX (`initialize`) from the config or the environment;
  * builds the NamedShardings of the train state and the constant data over
    the 'data' mesh (`mesh.py`): replicated, or the large tables split by
    rows when `config.shard_tables`;
  * compiles the epoch's programs with explicit in/out shardings under the
    mesh (`Runner.compile_epoch`). XLA's SPMD partitioner splits the work;
    the training batch is pinned to the 'data' axis by
    `mesh.constrain_batch`, which `epoch.begin_epoch` calls (a no-op
    without a mesh);
  * ranks users for full-ranking evaluation device by device
    (`ShardedEvaluator`), with exactly the single-device results.
The row-sharded InfoNCE is an operator like the others: `ops.infonce`.

Every process reads the same .npz and builds the same arrays; global arrays
are made with `jax.make_array_from_callback`, which works whether or not a
device belongs to this process.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from absl import logging
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mentor_jax import epoch as epoch_lib
from mentor_jax import mesh as mesh_lib
from mentor_jax import metrics as metrics_lib
from mentor_jax import ranking
from mentor_jax.mesh import AXIS

# The data's item features, split by rows with `shard_tables=True` (the
# parameters that are tables are each family's `table_params`).
DATA_TABLES = ('feat_v', 'feat_t')


# ---------------------------------------------------------------------------
# Processes.


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
# The trainer's view: placement, the sharded epoch, the sharded evaluation.


class Runner:
  """Places the train state and data on a mesh and compiles the epoch there.

  With one device in one process `active` is False and every method returns
  its input unchanged (or the plain jitted programs), so single-device runs
  keep the exact code path of `epoch.py`.
  """

  def __init__(self, mesh: jax.sharding.Mesh, shard_tables: bool = False):
    self.mesh = mesh
    self.shard_tables = shard_tables
    self.replicated = NamedSharding(mesh, P())
    self._shardings = None

  @classmethod
  def from_config(cls, config: Any, mesh_shape: Any = None) -> 'Runner':
    """Initializes multi-host JAX if asked, then builds the mesh
    (`config.mesh_shape`, unless `mesh_shape` is given)."""
    initialize(config)
    mesh = mesh_lib.make_mesh(config.get('mesh_shape', 'auto')
                              if mesh_shape is None else mesh_shape)
    return cls(mesh, bool(config.get('shard_tables', False)))

  @property
  def active(self) -> bool:
    return self.mesh.size > 1 or jax.process_count() > 1

  def place(self, state: Any, rest: Any, data: Any,
            table_params: Sequence[str] = ()) -> tuple[Any, Any, Any]:
    """Global arrays: the family's tables (`table_params`) and the item
    features split by rows if `shard_tables`, everything else copied."""
    if not self.active:
      return state, rest, data
    names = tuple(table_params) if self.shard_tables else ()
    data_names = DATA_TABLES if self.shard_tables else ()
    self._shardings = (tree_shardings(self.mesh, state, names),
                       tree_shardings(self.mesh, rest),
                       tree_shardings(self.mesh, data, data_names))
    if self.shard_tables:
      _warn_unsplit(state.params, self._shardings[0].params, names,
                    self.mesh.shape[AXIS])
    return tuple(to_global(t, s) for t, s in zip((state, rest, data),
                                                  self._shardings))

  def compile_epoch(self, state: Any, rest: Any, data: Any, *,
                    graphdef: Any, family: Any,
                    hp: Any) -> epoch_lib.CompiledEpoch:
    """The epoch's two programs (`epoch.py`), compiled ahead of time for
    these arguments; under a mesh with explicit in/out shardings.

    XLA's SPMD partitioner splits the batch-dependent work (pinned by
    `mesh.constrain_batch`) and whatever the table shardings imply, and
    inserts the collectives. The carry between the programs keeps the
    shardings the first one gives it.
    """
    statics = dict(graphdef=graphdef, family=family, hp=hp)
    if not self.active:
      return epoch_lib.compile_epoch(state, rest, data, **statics)
    state_sh, rest_sh, data_sh = self._shardings
    rep = self.replicated
    begin_out = epoch_lib.Epoch(state_sh, None, None, rep, rep, rep, rep)
    begin = jax.jit(
        lambda s, r, d: epoch_lib.begin_epoch(s, r, d, **statics),
        donate_argnums=0, in_shardings=(state_sh, rest_sh, data_sh),
        out_shardings=begin_out)
    with jax.set_mesh(self.mesh):
      lowered = begin.lower(state, rest, data)
      epoch_sh = lowered.compile().output_shardings
      steps = jax.jit(
          lambda e, r, d, a, b: epoch_lib.steps_with_marker(
              e, r, d, a, b, **statics),
          donate_argnums=0,
          in_shardings=(epoch_sh, rest_sh, data_sh, rep, rep),
          out_shardings=(epoch_sh, rep))
      return epoch_lib.compile_programs(
          lambda: lowered, lambda epoch, a, b: steps.lower(
              epoch, rest, data, a, b))

  def wrap_scores(self, clean_scores: Callable[..., Any]
                  ) -> Callable[..., Any]:
    """`epoch.clean_scores` with replicated outputs, under the mesh."""
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


def _warn_unsplit(params: Any, shardings: Any, names: Sequence[str],
                  n: int) -> None:
  """Says which named tables stay whole (their rows do not split evenly)."""
  whole = []
  for (path, x), sh in zip(jax.tree_util.tree_leaves_with_path(params),
                           jax.tree.leaves(shardings)):
    key = jax.tree_util.keystr(path)
    if any(name in key for name in names) and sh.spec == P():
      whole.append(f'{key} ({x.shape[0]} rows)')
  if whole:
    logging.warning('shard_tables: %s not split over the %d devices (rows '
                    'split only in equal parts), kept whole on each',
                    ', '.join(whole), n)


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
      parts = [ranking.chunk_csr(ptr, its, g, self.chunk, n_chunks)
               for g in groups]
      # One window and one length for all devices: entries past a chunk's
      # rows (other chunks, padding) are dropped by `rank_chunks`.
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
  """`metrics.Evaluator` with the users of each split divided over devices.

  Each device ranks its own users against all items with the single-device
  kernel (`ranking.rank_chunks`); the top-K lists are all-gathered so
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
      top, hits, _ = ranking.rank_chunks(
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
                     for m in metrics_lib.METRICS}
        continue
      _, hits = self._rank(plan, user_emb, item_emb)
      per_user = metrics_lib.topk_metrics(hits, plan.n_gt, self._ks)
      out[name] = {key: float(np.mean(v)) for key, v in per_user.items()}
    return out
