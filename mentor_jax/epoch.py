"""The compiled parts of training: the state, one epoch, clean scores.

An epoch is two compiled programs, both pure functions of pytrees:

* `begin_epoch`: the epoch's key, its batches (`ModelFamily.epoch_batches`)
  and the family's `epoch_setup`, i.e. everything before the first step;
* `run_steps`: steps [start, stop) of the epoch (`ModelFamily.train_step`),
  one `lax.fori_loop` on the device. The host calls it for a few segments of
  the epoch in a row (`run_epoch`) and watches them finish: that is the
  progress bar's signal. No host callback sits inside either program, so
  both can come from JAX's persistent compilation cache
  (`compilation_cache.py`); a callback would keep them out of it.

A step's arithmetic is the same whatever the segments: the loop body reads
batch i and the key fold_in(steps_key, i) and writes step i's loss parts,
as a scan over the epoch would; tests/test_progress.py checks that one
segment per step and one for the whole epoch give the same bits, and
bench/bit_identity.py that whole runs equal those of the one-program epoch
this replaced. stack.py maps both programs over K runs, and
distributed.py compiles them with shardings over a mesh.
"""

from __future__ import annotations

import ctypes
import functools
import math
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mentor_jax import compilation_cache
from mentor_jax import data as data_lib
from mentor_jax import family as family_lib
from mentor_jax import mesh as mesh_lib
from mentor_jax import registry
from mentor_jax.ops import sparse

# The segments of an epoch: about SEGMENT_S seconds of steps each, and
# SEGMENTS at most. Every segment is one launch of the steps program, which
# on a CPU costs 0.06-0.4 s (the program's scratch memory is mapped afresh:
# 0.5 GiB for a Baby-shape MENTOR step; bench/RESULTS.md section 15), so a
# segment per step would slow a run down by up to 10 %; 30 s segments keep
# that under 1-2 % and move the bar at least as often as its plain log
# lines (progress.LOG_INTERVAL_S).
SEGMENT_S = 30.0
SEGMENTS = 50


class TrainState(NamedTuple):
  """Everything that changes during training, as one pytree."""

  params: Any  # nnx.State of the model's nnx.Param leaves
  opt_state: Any
  key: jax.Array  # raw uint32 PRNG key, advanced once per epoch
  step: jax.Array  # int32 optimizer steps taken


class Epoch(NamedTuple):
  """An epoch in flight between its programs."""

  state: TrainState  # key advanced; params and opt_state step by step
  batches: Any  # [n_steps, ...] pytree from `epoch_batches`
  aux: Any  # `EpochStart.aux`, read by every step
  steps_key: jax.Array
  parts: dict[str, jax.Array]  # [n_steps] per loss part, filled step by step
  scores: tuple[jax.Array, jax.Array]  # the last step's (user, item) forward
  setup_parts: dict[str, jax.Array]  # `EpochStart.parts` ({} if none)


def init_state(model: nnx.Module, family: family_lib.ModelFamily,
               hp: family_lib.TrainHparams,
               seed: int) -> tuple[nnx.GraphDef, Any, TrainState]:
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  opt_state = family.make_optimizer(hp).init(params)
  state = TrainState(params, opt_state, jax.random.PRNGKey(seed),
                     jnp.zeros((), jnp.int32))
  return graphdef, rest, state


def _context(graphdef, rest, data, family, hp, aux=None, epoch=None
             ) -> family_lib.EpochContext:
  return family_lib.EpochContext(family, graphdef, rest, data, hp,
                                 family.make_optimizer(hp), aux, epoch)


def begin_epoch(state: TrainState, rest: Any, data: data_lib.DeviceData, *,
                graphdef: nnx.GraphDef, family: family_lib.ModelFamily,
                hp: family_lib.TrainHparams) -> Epoch:
  """Everything of an epoch before its first step (before jit)."""
  key, epoch_key = jax.random.split(state.key)
  batch_key, setup_key, steps_key = jax.random.split(epoch_key, 3)
  batches = family.epoch_batches(batch_key, data, hp)
  batches = mesh_lib.constrain_batch(batches)  # No-op on one device.
  n_steps = jax.tree.leaves(batches)[0].shape[0]
  # Every epoch has the same (static) number of steps.
  ctx = _context(graphdef, rest, data, family, hp,
                 epoch=state.step // n_steps)
  start = family.epoch_setup(ctx, state.params, state.opt_state, setup_key)
  # The buffers the steps fill: shapes of one step's outputs.
  out = jax.eval_shape(lambda: family.train_step(
      ctx._replace(aux=start.aux), start.params, start.opt_state,
      jax.tree.map(lambda x: x[0], batches), steps_key, 0))
  zeros = lambda s, *lead: jnp.zeros(lead + s.shape, s.dtype)
  return Epoch(
      TrainState(start.params, start.opt_state, key, state.step), batches,
      start.aux, steps_key,
      {name: zeros(s, n_steps) for name, s in out.parts.items()},
      jax.tree.map(zeros, out.scores), dict(start.parts or {}))


def run_steps(epoch: Epoch, rest: Any, data: data_lib.DeviceData,
              start: jax.Array, stop: jax.Array, *, graphdef: nnx.GraphDef,
              family: family_lib.ModelFamily,
              hp: family_lib.TrainHparams) -> Epoch:
  """Steps [start, stop) of `epoch` (before jit); bounds are traced."""
  n_steps = jax.tree.leaves(epoch.batches)[0].shape[0]
  ctx = _context(graphdef, rest, data, family, hp, epoch.aux,
                 (epoch.state.step - start) // n_steps)

  def one_step(index, carry):
    params, opt_state, parts, _ = carry
    batch = jax.tree.map(
        lambda x: jax.lax.dynamic_index_in_dim(x, index, keepdims=False),
        epoch.batches)
    out = family.train_step(ctx, params, opt_state, batch,
                            jax.random.fold_in(epoch.steps_key, index),
                            index)
    parts = {name: jax.lax.dynamic_update_index_in_dim(
        parts[name], out.parts[name], index, 0) for name in parts}
    return out.params, out.opt_state, parts, out.scores

  state = epoch.state
  params, opt_state, parts, scores = jax.lax.fori_loop(
      start, stop, one_step,
      (state.params, state.opt_state, epoch.parts, epoch.scores))
  state = state._replace(params=params, opt_state=opt_state,
                         step=state.step + (stop - start))
  return epoch._replace(state=state, parts=parts, scores=scores)


def steps_with_marker(epoch: Epoch, rest: Any, data: data_lib.DeviceData,
                      start: jax.Array, stop: jax.Array, *,
                      graphdef: nnx.GraphDef, family: family_lib.ModelFamily,
                      hp: family_lib.TrainHparams
                      ) -> tuple[Epoch, jax.Array]:
  """`run_steps`, and a marker: a buffer of its own (the epoch is donated
  to the next segment) that the host waits on to see the segment finish."""
  epoch = run_steps(epoch, rest, data, start, stop, graphdef=graphdef,
                    family=family, hp=hp)
  return epoch, epoch.state.step + 0


_STATICS = ('graphdef', 'family', 'hp')
begin_program = functools.partial(
    jax.jit, static_argnames=_STATICS, donate_argnames=('state',))(
        begin_epoch)
steps_program = functools.partial(
    jax.jit, static_argnames=_STATICS, donate_argnames=('epoch',))(
        steps_with_marker)


def segments(start: int, n_steps: int, step_s: float
             ) -> list[tuple[int, int]]:
  """[a, b) bounds that split steps [start, n_steps) into near-equal
  segments of about `SEGMENT_S` seconds (`SEGMENTS` at most), for steps
  of `step_s` seconds."""
  left = n_steps - start
  if left <= 0:
    return []
  length = max(1, math.ceil(SEGMENT_S / max(step_s, 1e-9)))
  n = max(1, min(SEGMENTS, -(-left // length)))
  edges = [start + round(i * left / n) for i in range(n + 1)]
  return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def run_epoch(begin: Callable[[Any], Epoch],
              steps: Callable[[Epoch, Any, Any], tuple[Epoch, jax.Array]],
              state: Any, n_steps: int,
              on_progress: Callable[[int], None] | None = None) -> Epoch:
  """One epoch: `begin(state)`, then `steps` over every segment.

  The epoch's first step runs alone and is timed (with `begin` before it:
  an upper bound on a step); the other steps are cut into `segments` of
  that many seconds, all dispatched at once (JAX dispatches asynchronously,
  so the device runs them back to back). With `on_progress`, the host then
  waits for each in turn and reports the steps done.
  """
  t0 = time.perf_counter()
  epoch = begin(state)
  epoch, marker = steps(epoch, np.int32(0), np.int32(1))
  marker.block_until_ready()
  step_s = time.perf_counter() - t0
  if on_progress is not None:
    on_progress(1)
  pending = []
  for start, stop in segments(1, n_steps, step_s):
    epoch, marker = steps(epoch, np.int32(start), np.int32(stop))
    pending.append((stop, marker))
  if on_progress is not None:
    for stop, marker in pending:
      marker.block_until_ready()
      on_progress(stop)
  return epoch


def epoch_outputs(epoch: Epoch) -> tuple[TrainState, dict[str, Any], Any]:
  """(state, loss parts {name: [n]}, scores) of a finished epoch."""
  return epoch.state, {**epoch.setup_parts, **epoch.parts}, epoch.scores


def train_epoch(state: TrainState, rest: Any, data: data_lib.DeviceData, *,
                graphdef: nnx.GraphDef, family: family_lib.ModelFamily,
                hp: family_lib.TrainHparams,
                on_progress: Callable[[int], None] | None = None):
  """One epoch with the jitted programs: (state, parts, scores)."""
  statics = dict(graphdef=graphdef, family=family, hp=hp)
  n_steps = n_steps_of(family, data, hp)
  epoch = run_epoch(
      lambda s: begin_program(s, rest, data, **statics),
      lambda e, a, b: steps_program(e, rest, data, a, b, **statics),
      state, n_steps, on_progress)
  return epoch_outputs(epoch)


def n_steps_of(family: family_lib.ModelFamily, data: data_lib.DeviceData,
               hp: family_lib.TrainHparams) -> int:
  """Steps per epoch: the leading axis of the family's batches."""
  shapes = jax.eval_shape(
      lambda key, data: family.epoch_batches(key, data, hp),
      jax.random.PRNGKey(0), data)
  return jax.tree.leaves(shapes)[0].shape[0]


class CompiledEpoch(NamedTuple):
  """Both programs of an epoch compiled ahead of time, and their facts."""

  begin: Callable[..., Epoch]  # (state, *args) -> Epoch
  steps: Callable[..., tuple[Epoch, jax.Array]]  # (epoch, *args, a, b)
  compile_s: float
  programs: tuple[Any, Any]  # the jax Compiled objects (memory_analysis)
  cache: compilation_cache.CacheStats

  def __call__(self, state: Any, *args: Any, n_steps: int,
               on_progress: Callable[[int], None] | None = None):
    """One epoch: (state, loss parts, scores); `args` follow the state
    (rest, data, ...) in both programs."""
    epoch = run_epoch(lambda s: self.begin(s, *args),
                      lambda e, a, b: self.steps(e, *args, a, b), state,
                      n_steps, on_progress)
    return epoch_outputs(epoch)


def compile_programs(lower_begin: Callable[[], Any],
                     lower_steps: Callable[[Any, Any, Any], Any]
                     ) -> CompiledEpoch:
  """AOT-compiles an epoch's two programs, begin first.

  Args:
    lower_begin: () -> the begin program lowered (`jit(...).lower(...)`).
    lower_steps: (epoch, start, stop) -> the steps program lowered, for
      begin's output (abstract, with its shardings) and int32 bounds.
  """
  t0 = time.perf_counter()
  with compilation_cache.CacheStats() as cache:
    lowered = lower_begin()
    begin = lowered.compile()
    epoch = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        lowered.out_info, begin.output_shardings)
    bound = jax.ShapeDtypeStruct((), jnp.int32)
    steps = lower_steps(epoch, bound, bound).compile()
  return CompiledEpoch(begin, steps, time.perf_counter() - t0,
                       (begin, steps), cache)


def compile_epoch(state: TrainState, rest: Any, data: data_lib.DeviceData,
                  *, graphdef: nnx.GraphDef, family: family_lib.ModelFamily,
                  hp: family_lib.TrainHparams) -> CompiledEpoch:
  """An epoch's programs compiled for these arguments, on one device
  (`distributed.Runner.compile_epoch` does it under a mesh)."""
  statics = dict(graphdef=graphdef, family=family, hp=hp)
  return compile_programs(
      lambda: begin_program.lower(state, rest, data, **statics),
      lambda epoch, a, b: steps_program.lower(epoch, rest, data, a, b,
                                              **statics))


@functools.partial(jax.jit, static_argnames=('graphdef', 'family', 'hp'))
def clean_scores(params: Any, rest: Any, data: data_lib.DeviceData, *,
                 graphdef: nnx.GraphDef, family: family_lib.ModelFamily,
                 hp: family_lib.TrainHparams):
  """(user, item) embeddings with the current parameters."""
  model = nnx.merge(graphdef, params, rest)
  return family.score(model, data, hp)


def release_freed_host_memory() -> bool:
  """Hands the heap that glibc keeps after frees back to the OS.

  XLA's compiler frees some 0.4 GiB of small allocations after compiling
  MENTOR's epoch (Baby shape); glibc keeps them mapped, and the program's own
  buffers (one 0.5 GiB block) then come on top. `malloc_trim(0)` between the
  two lowered the peak RSS of a 1-step Baby program from 1.71 to 1.37 GiB
  (bench/RESULTS.md, section 8). A no-op (False) where the C library is not
  glibc.
  """
  try:
    trim = ctypes.CDLL(None).malloc_trim
  except (OSError, AttributeError):
    return False
  trim.argtypes = [ctypes.c_size_t]
  trim(0)
  return True


def resolve_kernel(name: str) -> str:
  return sparse.pick_default_kernel() if name == 'auto' else name


def make_hparams(family: family_lib.ModelFamily,
                 config: ml_collections.ConfigDict,
                 dataset: data_lib.Dataset) -> family_lib.TrainHparams:
  """`family`'s static settings for `config`, derived values filled in."""
  return family.make_hparams(
      config, spmm_kernel=resolve_kernel(config.spmm_kernel),
      max_row_len=data_lib.max_row_length(dataset.split('train')[0]),
      steps_per_epoch=data_lib.steps_per_epoch(dataset.n_train,
                                               config.train_batch_size))


class Setup(NamedTuple):
  """What a run is built from: the family, its settings, data and state."""

  family: family_lib.ModelFamily
  hp: family_lib.TrainHparams
  data: data_lib.DeviceData
  graphdef: nnx.GraphDef
  rest: Any
  state: TrainState


def setup(config: ml_collections.ConfigDict,
          dataset: data_lib.Dataset) -> Setup:
  """Uploads the data and builds the model and the initial train state.

  The host copies of device-only arrays are released afterwards; the
  evaluation CSRs stay on `dataset`.
  """
  family = registry.get(config.model)
  hp = make_hparams(family, config, dataset)
  data = data_lib.to_device(dataset, config.knn_k)
  model = family.create_model(config, dataset)
  dataset.release_device_only()  # Their device copies are in `data`.
  graphdef, rest, state = init_state(model, family, hp, config.seed)
  return Setup(family, hp, data, graphdef, rest, state)
