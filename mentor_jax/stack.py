"""Several runs as one compiled program: seeds and a sweep, stacked.

  python -m mentor_jax.train --config configs/tiktok.py --workdir runs/s \
      --config.seeds='(0,1,2)' --config.sweep='mask_weight_g=1e-4,1e-3'

The runs are the Cartesian product of the sweep's values (last key fastest;
products separated by '|' are listed one after another:
`sweeps.sweep_cells`)
times the seeds (fastest of all). They differ only in what a traced value
can carry: the seed (parameters, shuffles, negatives, dropout masks) and the
family's `sweepable` hyper-parameters (`ModelFamily.sweepable`, plus
`learning_rate`: sweeps.py). Their parameters, Adam states, PRNG keys and swept values
are stacked on a leading axis, and one jitted map of each of the epoch's
programs (`epoch.begin_epoch`, `epoch.run_steps`) over them trains all runs
on ONE copy of the data: a `vmap` on a GPU/TPU, a scan over the runs on a
CPU (`config.stack_parallel`, `over_runs`). Settings that change shapes or
code (kernels, k, layers, the paper switches, the model) cannot be swept:
`mentor_jax.grid` groups cells by them and stacks the rest.

Each run keeps its own early stopping: once it stops, its state stops
changing and its best epoch is kept (run by run, the CPU's form, a stopped
run is skipped; a vmap computes and discards it). On disk (rundirs.py),
`<workdir>/runs/<k>/` is laid out as a single run's workdir (config.json
with the run's seed and values, metrics.jsonl, result.json,
per_user_test.npz, checkpoints/best), so that evaluate, recommend and
report read a run of a stack as any run (`--run K`); `<workdir>/checkpoints/latest` holds the stacked state that a
rerun resumes, and `<workdir>/result.json` lists the runs with the mean,
std and 95% interval of each metric (`stats.summary_of_runs`).
"""

from __future__ import annotations

import functools
import itertools
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mentor_jax import checkpointing
from mentor_jax import config_spec
from mentor_jax import data as data_lib
from mentor_jax import datasets
from mentor_jax import epoch as epoch_lib
from mentor_jax import errors
from mentor_jax import family as family_lib
from mentor_jax import registry
from mentor_jax import sweeps


class RunSpec(NamedTuple):
  """One run of a stack: its index, seed and swept values."""

  index: int
  seed: int
  overrides: dict[str, Any]


def runs_from_config(config: ml_collections.ConfigDict,
                     family: family_lib.ModelFamily) -> list[RunSpec]:
  """The runs of `config`: the sweep's cells times the seeds."""
  seeds = list(config.get('seeds') or (config.seed,))
  if len(set(seeds)) != len(seeds):
    raise errors.ConfigError(f'config.seeds={tuple(seeds)!r}: a seed is '
                             'repeated (two runs would be the same)')
  cells = sweeps.sweep_cells(config.get('sweep', '') or '', config,
                             family)
  return [RunSpec(i, seed, cell) for i, (cell, seed) in
          enumerate(itertools.product(cells, seeds))]


def run_config(config: ml_collections.ConfigDict,
               run: RunSpec) -> ml_collections.ConfigDict:
  """The config of `run` alone: what a single run with its settings uses."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.seed = run.seed
  for key, value in run.overrides.items():
    out[key] = type(config[key])(value)
  out.seeds = ()
  out.sweep = ''
  out.freeze_runs = ()
  return out


# --- stacked pytrees ----------------------------------------------------------


def stack_trees(trees: list[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def take(tree: Any, k: int) -> Any:
  return jax.tree.map(lambda x: x[k], tree)


class SplitRest(NamedTuple):
  """The models' non-trainable state: leaves shared by every run (data
  derived, e.g. LATTICE's feature graphs) once, per-run leaves stacked."""

  shared: list[Any]  # None where the leaf is per run
  stacked: list[Any]  # None where the leaf is shared
  treedef: Any


def split_rest(rests: list[Any]) -> SplitRest:
  flat = [jax.tree.flatten(r) for r in rests]
  treedef = flat[0][1]
  shared, stacked = [], []
  for leaves in zip(*(f[0] for f in flat)):
    first = np.asarray(leaves[0])
    if all(np.array_equal(first, np.asarray(x)) for x in leaves[1:]):
      shared.append(leaves[0])
      stacked.append(None)
    else:
      shared.append(None)
      stacked.append(jnp.stack(leaves))
  return SplitRest(shared, stacked, treedef)


def _merge_rest(treedef, shared, stacked_k):
  return jax.tree.unflatten(treedef, [s if s is not None else t
                                      for s, t in zip(shared, stacked_k)])


def _keep_stopped(new: Any, old: Any, active: jax.Array) -> Any:
  def pick(n, o):
    return jnp.where(active.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
  return jax.tree.map(pick, new, old)


def over_runs(fn, xs, parallel: int, active: jax.Array | None = None):
  """fn over the leading [K] axis of xs: `parallel` runs at a time.

  0 (or >= K): all K as one `vmap`, the accelerator's choice (the runs'
  matmuls batched together); n: groups of n runs one after another
  (`lax.map` with batch_size n), the CPU's choice, where one run already
  fills the cores: bench/RESULTS.md section 14 measured the full vmap
  1.2-1.5x slower than K sequential runs on a 2-core CPU (TikTok and the
  Baby shape), with every run's temporaries live at once, and the scan as
  fast as them (0.94-1.3x).

  With `active` ([K] bool), one run at a time visits the active runs only
  (a loop of sum(active) trips over their indices): a stopped run's
  outputs are zeros, which the callers replace by its kept state. Batched,
  the callers discard them instead.
  """
  if parallel == 1 and active is None:
    # A plain scan over the runs: each run's ops keep their unbatched
    # shapes (lax.map's batch_size=1, or a vmap of one run, would add a
    # size-1 batch axis, measured slower).
    return jax.lax.map(lambda x: fn(*x), xs)
  if parallel == 1:
    # Not a `cond` in the scan, which was 1.1-1.4x slower with every run
    # active (LightGCN on TikTok, bench/RESULTS.md section 19).
    run = lambda k: fn(*jax.tree.map(
        lambda a: jax.lax.dynamic_index_in_dim(a, k, keepdims=False), xs))
    shapes = jax.eval_shape(run, 0)
    n_runs = jax.tree.leaves(xs)[0].shape[0]
    order = jnp.argsort(~active, stable=True)  # the active runs first

    def one(i, out):
      y = run(order[i])
      return jax.tree.map(lambda o, v: jax.lax.dynamic_update_index_in_dim(
          o, v, order[i], 0), out, y)
    return jax.lax.fori_loop(
        0, jnp.sum(active), one, jax.tree.map(
            lambda s: jnp.zeros((n_runs,) + s.shape, s.dtype), shapes))
  if parallel == 0 or parallel >= jax.tree.leaves(xs)[0].shape[0]:
    return jax.vmap(lambda x: fn(*x))(xs)
  return jax.lax.map(lambda x: fn(*x), xs, batch_size=parallel)


def resolve_parallel(setting: str) -> int:
  """config.stack_parallel -> `over_runs`' count (0: all runs at once).

  'auto': one at a time on a CPU, all at once elsewhere; 'all'; or 'n'.
  """
  if setting == 'auto':
    return 1 if jax.default_backend() == 'cpu' else 0
  return 0 if setting == 'all' else int(setting)


_STATICS = ('graphdef', 'family', 'hp', 'treedef', 'parallel')


@functools.partial(jax.jit, static_argnames=_STATICS,
                   donate_argnames=('state',))
def stacked_begin(state: epoch_lib.TrainState, rest_shared: list[Any],
                  rest_stacked: list[Any], data: data_lib.DeviceData,
                  swept: dict[str, jax.Array], active: jax.Array, *,
                  graphdef, family, hp, treedef,
                  parallel: int = 0) -> epoch_lib.Epoch:
  """`epoch.begin_epoch` of every run of the stack, as one program.

  Args:
    state: TrainState with a leading [K] axis on every leaf.
    rest_shared, rest_stacked: `SplitRest` fields.
    data: the one copy of the data all runs read.
    swept: {hp field: [K] values}.
    active: [K] bool; runs that stopped keep their state.
    parallel: runs computed at once (`over_runs`; 0: all, vmapped).
  """
  def one(state_k, stacked_k, swept_k):
    return epoch_lib.begin_epoch(
        state_k, _merge_rest(treedef, rest_shared, stacked_k), data,
        graphdef=graphdef, family=family,
        hp=family_lib.with_values(hp, swept_k))

  new = over_runs(one, (state, rest_stacked, swept), parallel, active)
  return new._replace(state=_keep_stopped(new.state, state, active))


@functools.partial(jax.jit, static_argnames=_STATICS,
                   donate_argnames=('epoch',))
def stacked_steps(epoch: epoch_lib.Epoch, rest_shared: list[Any],
                  rest_stacked: list[Any], data: data_lib.DeviceData,
                  swept: dict[str, jax.Array], active: jax.Array,
                  start: jax.Array, stop: jax.Array, *, graphdef, family, hp,
                  treedef, parallel: int = 0
                  ) -> tuple[epoch_lib.Epoch, jax.Array]:
  """`epoch.run_steps` of every run, and the segment's marker."""
  def one(epoch_k, stacked_k, swept_k):
    return epoch_lib.run_steps(
        epoch_k, _merge_rest(treedef, rest_shared, stacked_k), data, start,
        stop, graphdef=graphdef, family=family,
        hp=family_lib.with_values(hp, swept_k))

  new = over_runs(one, (epoch, rest_stacked, swept), parallel, active)
  new = new._replace(state=_keep_stopped(new.state, epoch.state, active))
  return new, new.state.step + 0


@functools.partial(jax.jit, static_argnames=_STATICS)
def stacked_scores(params: Any, rest_shared: list[Any],
                   rest_stacked: list[Any], data: data_lib.DeviceData,
                   swept: dict[str, jax.Array], *, graphdef, family, hp,
                   treedef, parallel: int = 0):
  """Every run's (user, item) embeddings with its current parameters."""
  def one(params_k, stacked_k, swept_k):
    model = nnx.merge(graphdef, params_k,
                      _merge_rest(treedef, rest_shared, stacked_k))
    return family.score(model, data, family_lib.with_values(hp, swept_k))
  return over_runs(one, (params, rest_stacked, swept), parallel)


# --- the loop's view of a stack ----------------------------------------------


class StackedRuns:
  """K runs of a config as one program over one copy of the data.

  What the training loop (train.py) drives; `train.SingleRun` is the same
  interface for one run. The state has a leading [K] axis on every leaf.
  """

  def __init__(self, config: ml_collections.ConfigDict,
               dataset: data_lib.Dataset):
    self.config = config
    self.family = family = registry.get(config.model)
    self.specs = runs_from_config(config, family)
    self.configs = [run_config(config, r) for r in self.specs]
    self.hp = hp = epoch_lib.make_hparams(family, self.configs[0], dataset)
    self.data = data_lib.to_device(dataset, config.knn_k)
    states, rests, graphdef = [], [], None
    for c in self.configs:
      graphdef, rest, state = epoch_lib.init_state(
          family.create_model(c, dataset), family, hp, c.seed)
      states.append(state)
      rests.append(rest)
    dataset.release_device_only()
    self.rest = split_rest(rests)
    self.state = stack_trees(states)
    keys = sorted({k for r in self.specs for k in r.overrides})
    self.swept = {k: jnp.asarray([r.overrides[k] for r in self.specs],
                                 jnp.float32) for k in keys}
    self.statics = dict(
        graphdef=graphdef, family=family, hp=hp, treedef=self.rest.treedef,
        parallel=resolve_parallel(config.get('stack_parallel', 'auto')))
    self.n_steps = epoch_lib.n_steps_of(family, self.data, hp)
    self.dataset = dataset
    self._compiled: epoch_lib.CompiledEpoch | None = None
    self._active = None

  @property
  def label(self) -> str:
    return f'{self.config.model} x {len(self.specs)} runs'

  def signature(self, state: epoch_lib.TrainState) -> dict[str, Any]:
    """The stacked state's (the resume checkpoint's) signature."""
    return checkpointing.signature(self.config.model, self.dataset,
                                   state.params, state.opt_state)

  def run_signature(self, state: epoch_lib.TrainState) -> dict[str, Any]:
    """One run's (its best checkpoint's) signature."""
    return checkpointing.signature(self.config.model, self.dataset,
                                   take(state.params, 0),
                                   take(state.opt_state, 0))

  def _args(self, active) -> tuple[Any, ...]:
    return (self.rest.shared, self.rest.stacked, self.data, self.swept,
            active)

  def compile(self, state: epoch_lib.TrainState) -> epoch_lib.CompiledEpoch:
    active = jnp.ones(len(self.specs), bool)
    bound = dict(self.statics)
    self._compiled = epoch_lib.compile_programs(
        lambda: stacked_begin.lower(state, *self._args(active), **bound),
        lambda epoch, a, b: stacked_steps.lower(
            epoch, *self._args(active), a, b, **bound))
    return self._compiled

  def run_epoch(self, state: epoch_lib.TrainState, active: list[bool],
                on_progress=None):
    """(state, [parts of run k], [(user, item) of run k])."""
    state, parts, (users, items) = self._compiled(
        state, *self._args(jnp.asarray(active)), n_steps=self.n_steps,
        on_progress=on_progress)
    parts = jax.device_get(parts)
    k_runs = range(len(self.specs))
    return (state, [{n: v[k] for n, v in parts.items()} for k in k_runs],
            [(users[k], items[k]) for k in k_runs])

  def recompute_scores(self, state: epoch_lib.TrainState):
    users, items = stacked_scores(
        state.params, self.rest.shared, self.rest.stacked, self.data,
        self.swept, **self.statics)
    return [(users[k], items[k]) for k in range(len(self.specs))]

  def run_state(self, state: epoch_lib.TrainState,
                k: int) -> epoch_lib.TrainState:
    return take(state, k)

  def resume(self, restored, state: epoch_lib.TrainState, books,
             where: pathlib.Path) -> epoch_lib.TrainState:
    """The state of a restored latest checkpoint; each run's book filled.

    Raises:
      CheckpointMismatchError: the checkpoint holds other runs.
    """
    params, opt_state, meta = restored
    saved = [(m['seed'], m['overrides']) for m in meta['stack']]
    asked = [(r.seed, r.overrides) for r in self.specs]
    if saved != asked:
      raise checkpointing.CheckpointMismatchError(
          f'{where}: its stack holds the runs (seed, values) {saved}, this '
          f'config asks for {asked}; use another --workdir for other seeds '
          'or values.')
    keys = jnp.stack([checkpointing.key_from_json(m['key'], state.key[0])
                      for m in meta['stack']])
    steps = jnp.asarray([m['step'] for m in meta['stack']],
                        state.step.dtype)
    for book, m in zip(books, meta['stack']):
      book.restore(m, meta['epoch'] + 1)
    return epoch_lib.TrainState(params, opt_state, keys, steps)

  def latest_meta(self, epoch: int, state: epoch_lib.TrainState, books,
                  signature: dict[str, Any]) -> dict[str, Any]:
    """The stacked checkpoint's meta: each run's fields in 'stack'."""
    config = self.config
    runs = [{'seed': spec.seed, 'overrides': spec.overrides,
             **book.state_meta(take(state, k)),
             'epochs_run': book.epochs_run, 'diverged': book.diverged}
            for k, (spec, book) in enumerate(zip(self.specs, books))]
    return {'format': checkpointing.FORMAT_VERSION, 'epoch': epoch,
            'stack': runs, 'eval_embeddings': config.eval_embeddings,
            'config': config_spec.config_to_json(config),
            'data_npz': str(datasets.resolve_data_path(
                config.data_npz).resolve()),
            'signature': signature}
