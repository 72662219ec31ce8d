"""Several runs as one compiled program: seeds and a sweep, stacked.

  python -m mentor_jax.train --config configs/tiktok.py --workdir runs/s \
      --config.seeds='(0,1,2)' --config.sweep='mask_weight_g=1e-4,1e-3'

The runs are the Cartesian product of the sweep's values (last key fastest)
times the seeds (fastest of all). They differ only in what a traced value
can carry: the seed (parameters, shuffles, negatives, dropout masks) and the
family's `sweepable` hyper-parameters (`ModelFamily.sweepable`, plus
`learning_rate`). Their parameters, Adam states, PRNG keys and swept values
are stacked on a leading axis, and one jitted map of the trainer's epoch
program (`train.epoch_program`) over them trains all runs on ONE copy of
the data: a `vmap` on a GPU/TPU, a scan over the runs on a CPU
(`config.stack_parallel`, `over_runs`). Settings that change shapes or
code (kernels, k, layers, the paper switches, the model) cannot be swept:
`mentor_jax.grid` groups cells by them and stacks the rest.

Each run keeps its own early stopping: once it stops, its state stops
changing (the stack still computes it; its results are discarded), and its
best epoch is kept. On disk, `<workdir>/runs/<k>/` is laid out as a
single run's workdir (config.json with the run's seed and values,
metrics.jsonl, result.json, per_user_test.npz, checkpoints/best), so that
evaluate, recommend and report read a run of a stack as any run
(`--run K`); `<workdir>/checkpoints/latest` holds the stacked state that a
rerun resumes, and `<workdir>/result.json` lists the runs with the mean,
std and 95% interval of each metric (`stats.summary_of_runs`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import pathlib
import time
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mentor_jax import checkpointing
from mentor_jax import config_spec
from mentor_jax import console
from mentor_jax import data as data_lib
from mentor_jax import datasets
from mentor_jax import distributed
from mentor_jax import errors
from mentor_jax import family as family_lib
from mentor_jax import registry
from mentor_jax import stats
from mentor_jax import train
from mentor_jax import workdir as workdir_lib

RUNS_DIR = 'runs'  # <workdir>/runs/<k>/, as stats.run_dirs reads them


class RunSpec(NamedTuple):
  """One run of a stack: its index, seed and swept values."""

  index: int
  seed: int
  overrides: dict[str, Any]


def sweepable(family: family_lib.ModelFamily) -> frozenset[str]:
  return family.sweepable | {'learning_rate'}


def parse_sweep(text: str, config: ml_collections.ConfigDict,
                family: family_lib.ModelFamily) -> dict[str, list[float]]:
  """'a=1e-4,1e-3;b=0.2,0.4' -> {'a': [1e-4, 1e-3], 'b': [0.2, 0.4]}.

  Raises:
    ConfigError: naming the part of `config.sweep` that is wrong.
  """
  specs = dict(config_spec.TRAINER)
  specs.update(family.config_spec)
  allowed = sorted(sweepable(family))
  sweep = {}
  for part in filter(None, (p.strip() for p in text.split(';'))):
    key, sep, values = part.partition('=')
    key = key.strip()
    where = f'config.sweep={text!r}: {part!r}'
    if not sep or not values.strip():
      raise errors.ConfigError(f'{where}: expected key=v1,v2,...')
    if key in sweep:
      raise errors.ConfigError(f'{where}: {key!r} is swept twice')
    if key not in allowed:
      raise errors.ConfigError(
          f'{where}: {key!r} cannot be swept in one stack for model '
          f'{family.name!r} (it changes shapes or code, or is not a setting '
          f'of the model); sweepable: {", ".join(allowed)}. Use '
          'python -m mentor_jax.grid, which runs one stack per value of '
          'such settings.')
    try:
      parsed = [float(v) for v in values.split(',')]
    except ValueError:
      raise errors.ConfigError(
          f'{where}: the values must be numbers') from None
    for v in parsed:
      specs[key].validate(f'sweep:{key}', v)
    if key in family.gated and len({v == 0 for v in parsed}) > 1:
      raise errors.ConfigError(
          f'{where}: {key}=0 removes its loss term, a different program '
          'from the non-zero values; sweep them in separate runs (the grid '
          'runner groups them).')
    sweep[key] = parsed
  return sweep


def runs_from_config(config: ml_collections.ConfigDict,
                     family: family_lib.ModelFamily) -> list[RunSpec]:
  """The runs of `config`: the sweep's cells times the seeds."""
  seeds = list(config.get('seeds') or (config.seed,))
  if len(set(seeds)) != len(seeds):
    raise errors.ConfigError(f'config.seeds={tuple(seeds)!r}: a seed is '
                             'repeated (two runs would be the same)')
  sweep = parse_sweep(config.get('sweep', '') or '', config, family)
  cells = [dict(zip(sweep, values))
           for values in itertools.product(*sweep.values())]
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


def over_runs(fn, xs, parallel: int):
  """fn over the leading [K] axis of xs: `parallel` runs at a time.

  0 (or >= K): all K as one `vmap`, the accelerator's choice (the runs'
  matmuls batched together); n: groups of n runs one after another
  (`lax.map` with batch_size n), the CPU's choice, where one run already
  fills the cores: bench/RESULTS.md section 14 measured the full vmap
  1.2-1.5x slower than K sequential runs on a 2-core CPU (TikTok and the
  Baby shape), with every run's temporaries live at once, and the scan as
  fast as them (0.94-1.3x).
  """
  if parallel == 1:
    # A plain scan over the runs: each run's ops keep their unbatched
    # shapes (lax.map's batch_size=1, or a vmap of one run, would add a
    # size-1 batch axis, measured slower).
    return jax.lax.map(lambda x: fn(*x), xs)
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


@functools.partial(jax.jit, static_argnames=('graphdef', 'family', 'hp',
                                             'treedef', 'progress',
                                             'parallel'),
                   donate_argnames=('state',))
def stacked_epoch(state: train.TrainState, rest_shared: list[Any],
                  rest_stacked: list[Any], data: data_lib.DeviceData,
                  swept: dict[str, jax.Array], active: jax.Array, *,
                  graphdef, family, hp, treedef, progress: bool = True,
                  parallel: int = 0):
  """One epoch of every run of the stack, as one program.

  Args:
    state: TrainState with a leading [K] axis on every leaf.
    rest_shared, rest_stacked: `SplitRest` fields.
    data: the one copy of the data all runs read.
    swept: {hp field: [K] values}.
    active: [K] bool; runs that stopped keep their state.
    parallel: runs computed at once (`over_runs`; 0: all, vmapped).

  Returns:
    As `train.train_epoch`, each output with the leading [K] axis.
  """
  def one(state_k, stacked_k, swept_k):
    return train.epoch_program(
        state_k, _merge_rest(treedef, rest_shared, stacked_k), data,
        graphdef=graphdef, family=family,
        hp=family_lib.with_values(hp, swept_k), progress=progress)

  new, parts, scores = over_runs(one, (state, rest_stacked, swept), parallel)
  return _keep_stopped(new, state, active), parts, scores


@functools.partial(jax.jit, static_argnames=('graphdef', 'family', 'hp',
                                             'treedef', 'parallel'))
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


# --- the stacked run ----------------------------------------------------------


class Stack(NamedTuple):
  runs: list[RunSpec]
  configs: list[ml_collections.ConfigDict]
  family: family_lib.ModelFamily
  hp: family_lib.TrainHparams
  data: data_lib.DeviceData
  graphdef: nnx.GraphDef
  rest: SplitRest
  state: train.TrainState
  swept: dict[str, jax.Array]


def build(config: ml_collections.ConfigDict, dataset: data_lib.Dataset,
          runs: list[RunSpec]) -> Stack:
  """One model per run (its seed, its values), stacked; the data once."""
  family = registry.get(config.model)
  configs = [run_config(config, r) for r in runs]
  hp = train.make_hparams(family, configs[0], dataset)
  data = data_lib.to_device(dataset, config.knn_k)
  states, rests, graphdef = [], [], None
  for c in configs:
    graphdef, rest, state = train.init_state(
        family.create_model(c, dataset), hp, c.seed)
    states.append(state)
    rests.append(rest)
  dataset.release_device_only()
  keys = sorted({k for r in runs for k in r.overrides})
  swept = {k: jnp.asarray([r.overrides[k] for r in runs], jnp.float32)
           for k in keys}
  return Stack(runs, configs, family, hp, data, graphdef, split_rest(rests),
               stack_trees(states), swept)


class _RunBook:
  """Host-side record of one run: stopping, best epoch, files."""

  def __init__(self, run: RunSpec, config, workdir: pathlib.Path,
               signature: dict, evaluator: train.Evaluator):
    self.run = run
    self.config = config
    self.dir = workdir / RUNS_DIR / str(run.index)
    self.dir.mkdir(parents=True, exist_ok=True)
    self.writer = train.MetricWriter(self.dir)
    self.ckpt = checkpointing.Checkpointer(self.dir / 'checkpoints')
    # Its best checkpoint is a single run's (evaluate reads it).
    self.tracker = train.BestEpoch(config, signature, self.ckpt, self.dir,
                                   evaluator)
    self.stopped = False
    self.epochs_run = 0
    self.diverged = None

  def to_meta(self, state_k) -> dict[str, Any]:
    return {'seed': self.run.seed, 'overrides': self.run.overrides,
            'step': int(state_k.step),
            'key': checkpointing.key_to_json(state_k.key),
            'early_stopping': {'best': self.tracker.stopper.best,
                               'bad_epochs': self.tracker.stopper.bad_epochs},
            'best': self.tracker.best, 'stopped': self.stopped,
            'epochs_run': self.epochs_run, 'diverged': self.diverged}

  def load_meta(self, m: dict[str, Any]) -> None:
    self.tracker.restore(m)
    self.stopped = m['stopped']
    self.epochs_run, self.diverged = m['epochs_run'], m.get('diverged')

  def result(self) -> dict[str, Any]:
    out = dict(self.tracker.best, epochs_run=self.epochs_run)
    if self.diverged:
      out['diverged'] = self.diverged
    return out


def train_locked(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                 runner: distributed.Runner) -> dict[str, Any]:
  """`train.train_and_evaluate` for a stack of runs (see the module doc)."""
  if runner.active:
    raise errors.ConfigError(
        'config.seeds / config.sweep: a stack of runs trains on one device '
        f'for now, and this run has a mesh of {runner.mesh.size} devices; '
        'set --config.mesh_shape=1 (or run the seeds separately).')
  family = registry.get(config.model)
  runs = runs_from_config(config, family)
  dataset = datasets.load_for_config(config)
  stack = build(config, dataset, runs)
  hp, data, state = stack.hp, stack.data, stack.state
  rest = stack.rest
  statics = dict(graphdef=stack.graphdef, family=family, hp=hp,
                 treedef=rest.treedef,
                 parallel=resolve_parallel(config.get('stack_parallel',
                                                      'auto')))
  evaluator = train.Evaluator(dataset, config)
  n_steps = data_lib.steps_per_epoch(dataset.n_train, hp.batch_size)
  run_sig = checkpointing.signature(config.model, dataset,
                                    take(state.params, 0))
  books = [_RunBook(r, c, workdir, run_sig, evaluator)
           for r, c in zip(runs, stack.configs)]
  sig = checkpointing.signature(config.model, dataset, state.params)
  ckpt = checkpointing.Checkpointer(workdir / 'checkpoints')
  last_epoch = -1
  with contextlib.ExitStack() as closing:
    closing.enter_context(contextlib.closing(ckpt))
    for b in books:
      closing.enter_context(contextlib.closing(b.ckpt))
    restored = ckpt.restore_latest(
        state.params, state.opt_state, sig,
        allow_other_data=config.get('resume_other_data', False))
    if restored is not None:
      params, opt_state, meta = restored
      saved = [(m['seed'], m['overrides']) for m in meta['stack']]
      if saved != [(r.seed, r.overrides) for r in runs]:
        raise checkpointing.CheckpointMismatchError(
            f'{ckpt.directory / checkpointing.LATEST}: its stack holds the '
            f'runs (seed, values) {saved}, this config asks for '
            f'{[(r.seed, r.overrides) for r in runs]}; use another '
            '--workdir for other seeds or values.')
      keys = jnp.stack([checkpointing.key_from_json(m['key'], state.key[0])
                        for m in meta['stack']])
      steps = jnp.asarray([m['step'] for m in meta['stack']],
                          state.step.dtype)
      state = train.TrainState(params, opt_state, keys, steps)
      for b, m in zip(books, meta['stack']):
        b.load_meta(m)
      last_epoch = meta['epoch']
      logging.info('resuming the stack of %d runs after epoch %d',
                   len(runs), last_epoch)
    # Only once a resume (if any) is accepted: a refused one must not have
    # replaced the record of the runs' settings.
    workdir_lib.write_text_atomic(workdir / 'config.json',
                                  config.to_json_best_effort(indent=2))
    for b in books:
      workdir_lib.write_text_atomic(b.dir / 'config.json',
                                    b.config.to_json_best_effort(indent=2))
    for b in books:
      b.ckpt.drop_best_after(last_epoch)
      b.writer.truncate_after(last_epoch)
    logging.info('%s', console.startup_block(
        devices=list(runner.mesh.devices.flat), dataset=dataset,
        n_params=sum(x.size for x in jax.tree.leaves(state.params)),
        n_steps=n_steps, batch_size=hp.batch_size, kernel=hp.spmm_kernel,
        model=f'{config.model} x {len(runs)} runs', workdir=workdir,
        epochs=(last_epoch + 1, config.epochs - 1), memory=None,
        compile_s=None))
    signals = closing.enter_context(checkpointing.StopSignals())
    ks = train.log_ks(config.topk)
    for epoch in range(last_epoch + 1, config.epochs):
      if all(b.stopped for b in books):
        break
      active = jnp.asarray([not b.stopped for b in books])
      t0 = time.perf_counter()
      state, parts, scores = stacked_epoch(
          state, rest.shared, rest.stacked, data, stack.swept, active,
          progress=False, **statics)
      parts = jax.device_get(parts)
      train_time = time.perf_counter() - t0
      if config.eval_embeddings == 'recompute':
        scores = stacked_scores(state.params, rest.shared, rest.stacked,
                                data, stack.swept, **statics)
      t1 = time.perf_counter()
      for k, b in enumerate(books):
        if b.stopped:
          continue
        parts_k = {name: v[k] for name, v in parts.items()}
        diverged = train.non_finite_error(parts_k, epoch,
                                          int(state.step[k]) - n_steps)
        b.epochs_run = epoch + 1
        if diverged is not None:
          # The others go on; this run keeps its best epoch.
          logging.warning('run %d: %s', k, diverged)
          b.stopped, b.diverged = True, str(diverged)
          continue
        user_emb, item_emb = scores[0][k], scores[1][k]
        result = evaluator(user_emb, item_emb)
        improved, stop = b.tracker.update(epoch, result)
        if improved:
          b.tracker.save(epoch, take(state, k), (user_emb, item_emb), stop)
        b.stopped = stop
        b.writer.write({
            'epoch': epoch, 'step': int(state.step[k]),
            'loss': {n: float(np.mean(v)) for n, v in parts_k.items()},
            # The one program that trained every active run of the stack.
            'train_time_s': train_time, 'stack_runs': len(books),
            'eval_time_s': time.perf_counter() - t1,
            'valid': result['valid'], 'test': result['test'],
            'best_epoch': b.tracker.best['best_epoch']})
        if epoch % config.log_every_epochs == 0 or improved or stop:
          logging.info('epoch %d run %d (seed %d%s): valid %s | test %s%s%s',
                       epoch, k, b.run.seed, ''.join(
                           f', {n}={v:g}' for n, v in b.run.overrides.items()),
                       train.format_metrics(result['valid'], ks),
                       train.format_metrics(result['test'], ks),
                       ' *' if improved else '',
                       ' (early stop)' if stop else '')
      logging.info('epoch %d: %d runs trained in %.2fs, evaluated in %.2fs',
                   epoch, int(np.sum(np.asarray(active))), train_time,
                   time.perf_counter() - t1)
      last_epoch = epoch
      done = all(b.stopped for b in books) or epoch == config.epochs - 1
      if (done or signals.signum
          or (epoch + 1) % config.checkpoint_every_epochs == 0):
        meta = {'format': checkpointing.FORMAT_VERSION, 'epoch': epoch,
                'stack': [b.to_meta(take(state, k))
                          for k, b in enumerate(books)],
                'eval_embeddings': config.eval_embeddings,
                'config': checkpointing.config_to_json(config),
                'data_npz': str(datasets.resolve_data_path(
                    config.data_npz).resolve()),
                'signature': sig}
        ckpt.save_latest(epoch, state.params, state.opt_state, meta)
      if signals.signum:
        break
  results = [b.result() for b in books]
  out = {'runs': [dict(r, run=b.run.index, seed=b.run.seed,
                       overrides=b.run.overrides)
                  for r, b in zip(results, books)],
         # Over the runs that reached a best epoch (not one that diverged
         # in its first epoch).
         'summary': stats.summary_of_runs(
             [r for r in results if r['best_epoch'] >= 0]) if any(
                 r['best_epoch'] >= 0 for r in results) else {},
         'epochs_run': last_epoch + 1}
  if signals.signum:
    logging.warning('%s: stopped after epoch %d; run the same command again '
                    'to resume.', signals.name, last_epoch)
    return dict(out, interrupted=signals.name)
  for r, b in zip(results, books):
    workdir_lib.write_json_atomic(b.dir / 'result.json', r)
  workdir_lib.write_json_atomic(workdir / 'result.json', out)
  return out


def run_dir(workdir: str | pathlib.Path, run: int | None) -> pathlib.Path:
  """The directory of run `run` of a stacked workdir (or `workdir` itself).

  Raises:
    ConfigError: a stack without `run`, or `run` of a workdir that is not a
      stack / out of range.
  """
  workdir = pathlib.Path(workdir)
  dirs = stats.run_dirs(workdir) if stats.is_stack(workdir) else []
  n = len(dirs)
  if run is None:
    if n:
      raise errors.ConfigError(
          f'{workdir} holds a stack of {n} runs; name one with --run K '
          f'(0..{n - 1}).')
    return workdir
  if not n:
    raise errors.ConfigError(f'--run {run}: {workdir} holds a single run, '
                             'not a stack; leave --run out.')
  if not 0 <= run < n:
    raise errors.ConfigError(f'--run {run}: {workdir} holds runs 0..{n - 1}')
  return dirs[run]
