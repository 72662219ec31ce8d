"""Trains a model and reports full-ranking Recall/NDCG: one run or a stack.

  python -m mentor_jax.train --config configs/small.py --workdir runs/small
  python -m mentor_jax.train --config configs/tiny.py:lightgcn \
      --config.seeds='(0,1,2)' --workdir runs/lightgcn_seeds

`train_and_evaluate(config, workdir)` is the trainer (`main.py` is its
command line). It drives K runs with one loop: a single run is K = 1
(`SingleRun`, on one device or a mesh), `config.seeds` / `config.sweep` make
a stack of K runs in one program (`stack.StackedRuns`). Each epoch's
programs (`epoch.py`) run on the device; after each epoch every run's
valid and test splits are ranked against all items, its record goes to its
writers (metrics.jsonl, TensorBoard) and its early stopping is decided
(`runbook.RunBook`). Checkpoints (checkpointing.py) go to
`<workdir>/checkpoints`; rerunning the command resumes, and SIGINT/SIGTERM
stop cleanly between epochs.
"""

from __future__ import annotations

import contextlib
import pathlib
import runpy
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from mentor_jax import checkpointing
from mentor_jax import compilation_cache
from mentor_jax import config_spec
from mentor_jax import console
from mentor_jax import datasets
from mentor_jax import distributed
from mentor_jax import epoch as epoch_lib
from mentor_jax import errors
from mentor_jax import mesh as mesh_lib
from mentor_jax import metrics as metrics_lib
from mentor_jax import progress as progress_lib
from mentor_jax import registry
from mentor_jax import rundirs
from mentor_jax import runbook
from mentor_jax import signals as signals_lib
from mentor_jax import stack as stack_lib
from mentor_jax import stats
from mentor_jax import workdir as workdir_lib


class SingleRun:
  """One run, as the loop drives it (`stack.StackedRuns` is K of them).

  On a mesh (`distributed.Runner`) its state and data are global arrays and
  its programs are compiled with shardings; on one device they are the
  plain ones.
  """

  def __init__(self, config: ml_collections.ConfigDict, dataset,
               runner: distributed.Runner):
    self.config, self.dataset, self.runner = config, dataset, runner
    built = epoch_lib.setup(config, dataset)
    self.family, self.hp = built.family, built.hp
    self.state, self.rest, self.data = runner.place(
        built.state, built.rest, built.data, built.family.table_params)
    self.statics = dict(graphdef=built.graphdef, family=built.family,
                        hp=built.hp)
    self.specs = [stack_lib.RunSpec(0, config.seed, {})]
    self.configs = [config]
    self.n_steps = epoch_lib.n_steps_of(self.family, self.data, self.hp)
    self.label = config.model
    self._scores = runner.wrap_scores(epoch_lib.clean_scores)
    self._compiled = None

  def signature(self, state: epoch_lib.TrainState) -> dict[str, Any]:
    return checkpointing.signature(self.config.model, self.dataset,
                                   state.params, state.opt_state)

  def compile(self, state: epoch_lib.TrainState) -> epoch_lib.CompiledEpoch:
    self._compiled = self.runner.compile_epoch(state, self.rest, self.data,
                                               **self.statics)
    return self._compiled

  def run_epoch(self, state: epoch_lib.TrainState, active: list[bool],
                on_progress=None):
    """(state, [loss parts], [(user, item) embeddings]) of one epoch."""
    del active  # A single run trains only while active.
    state, parts, scores = self._compiled(
        state, self.rest, self.data, n_steps=self.n_steps,
        on_progress=on_progress)
    return state, [jax.device_get(parts)], [scores]

  def recompute_scores(self, state: epoch_lib.TrainState):
    return [self._scores(state.params, self.rest, self.data,
                         **self.statics)]

  def run_state(self, state: epoch_lib.TrainState,
                k: int) -> epoch_lib.TrainState:
    del k
    return state

  def resume(self, restored, state: epoch_lib.TrainState, books,
             where: pathlib.Path) -> epoch_lib.TrainState:
    del where
    params, opt_state, meta = restored
    step = np.asarray(meta['step'], state.step.dtype)
    books[0].restore(meta, meta['epoch'] + 1)
    return epoch_lib.TrainState(
        params, opt_state, checkpointing.key_from_json(meta['key'],
                                                       state.key),
        checkpointing.put_like(step, state.step))

  def latest_meta(self, epoch: int, state: epoch_lib.TrainState, books,
                  signature: dict[str, Any]) -> dict[str, Any]:
    del signature  # The book's: the same for a single run.
    return books[0].checkpoint_meta(epoch, state)


def stack_requested(config: ml_collections.ConfigDict) -> bool:
  """Several runs in one program: `config.seeds` or `config.sweep` set."""
  return bool(config.get('seeds')) or bool(config.get('sweep'))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Validates every key of `config` for its model (`config_spec`).

  Raises:
    ConfigError: naming the key, the value found and what is allowed.
  """
  family = registry.get(config.model)
  config_spec.validate(config, family.config_spec, family.name)
  frozen = tuple(config.get('freeze_runs') or ())
  n_runs = frozen and stack_requested(config) and len(
      stack_lib.runs_from_config(config, family))
  if frozen and max(frozen) >= n_runs:
    raise errors.ConfigError(
        f'config.freeze_runs={frozen}: only runs of a stack freeze, and ' +
        (f'this one has the runs 0..{n_runs - 1}' if n_runs else
         'this config is one run (no config.seeds / config.sweep)'))
  if config.get('shard_tables') and not family.table_params:
    raise errors.ConfigError(
        f'config.shard_tables=True: model {family.name!r} has no trainable '
        'user or item tables to split over the devices; leave it False.')


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains with early stopping; returns the best epoch's metrics.

  Returns:
    A single run: {'best_epoch', 'valid', 'test', 'epochs_run'}, the valid
    and test metrics at the epoch with the best validation metric. A stack:
    {'runs': [that, with 'run', 'seed', 'overrides'], 'summary' (mean,
    std, 95% interval per metric), 'epochs_run'}. Either gets
    'interrupted' (the signal's name) when SIGINT/SIGTERM stopped it early.
    With a checkpoint in `<workdir>/checkpoints/latest`, training resumes
    after it and ends exactly as an uninterrupted run would.
  """
  # Every key checked before anything is loaded, compiled or written.
  check_config(config)
  compilation_cache.enable(config.get('compile_cache', 'auto'))
  # Scale-out (distributed.py): multi-host start-up and the device mesh,
  # before any computation. Only process 0 writes files.
  runner = (_stack_runner(config) if stack_requested(config)
            else distributed.Runner.from_config(config))
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  with contextlib.ExitStack() as stack:
    if distributed.is_chief():
      # One trainer per workdir: a second one is refused, naming the first.
      stack.enter_context(workdir_lib.Lock(workdir))
    return _train_locked(config, workdir, runner)


def _stack_runner(config: ml_collections.ConfigDict) -> distributed.Runner:
  """A stack's devices: one, for now (a stack is not spread over a mesh).

  With `mesh_shape='auto'` on a host with several devices the stack takes
  the first and says so; asking for more devices, or several processes,
  is refused.
  """
  asked = mesh_lib.device_count(config.get('mesh_shape', 'auto'))
  if asked is not None and asked > 1:
    raise errors.ConfigError(
        f'config.mesh_shape={config.mesh_shape!r}: a stack of runs '
        '(config.seeds / config.sweep) trains on one device for now; set '
        '--config.mesh_shape=1 (or leave it auto), or run the seeds '
        'separately to use several devices.')
  distributed.initialize(config)
  if jax.process_count() > 1:
    raise errors.ConfigError(
        'config.seeds / config.sweep: a stack of runs trains in one '
        f'process for now, and this job has {jax.process_count()}; run it '
        'on one host.')
  if asked is None and len(jax.devices()) > 1:
    logging.warning('a stack of runs trains on one device for now: %s, the '
                    'first of %d (--config.mesh_shape=1 says so and silences '
                    'this)', jax.devices()[0], len(jax.devices()))
  return distributed.Runner.from_config(config, mesh_shape=1)


def _books(runs, config, workdir: pathlib.Path, ckpt, state, evaluator,
           closing: contextlib.ExitStack) -> list[runbook.RunBook]:
  """A RunBook per run: the workdir's for a single run, runs/<k>/ each for
  a stack (with a checkpointer of its own for its best epoch)."""
  chief = distributed.is_chief()
  if isinstance(runs, SingleRun):
    return [runbook.RunBook(config, runs.signature(state), workdir, ckpt,
                            evaluator, chief)]
  books = []
  signature = runs.run_signature(state)
  for spec, run_config in zip(runs.specs, runs.configs):
    directory = workdir / rundirs.RUNS_DIR / str(spec.index)
    directory.mkdir(parents=True, exist_ok=True)
    # Its best steps are pruned against the stack's latest steps, the
    # ones a resume reads.
    run_ckpt = closing.enter_context(contextlib.closing(
        checkpointing.Checkpointer(directory / 'checkpoints',
                                   latest_of=ckpt)))
    books.append(runbook.RunBook(run_config, signature, directory, run_ckpt,
                                 evaluator, chief))
  return books


def _train_locked(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                  runner: distributed.Runner) -> dict[str, Any]:
  """`train_and_evaluate` once the config is valid and the workdir ours."""
  stacked = stack_requested(config)
  dataset = datasets.load_for_config(config)
  runs = (stack_lib.StackedRuns(config, dataset) if stacked
          else SingleRun(config, dataset, runner))
  state = runs.state
  local_evaluator = metrics_lib.Evaluator.for_config(dataset, config)
  evaluator = runner.evaluator(dataset, config, local_evaluator)
  chief = distributed.is_chief()
  signature = runs.signature(state)
  last_epoch = -1
  with contextlib.ExitStack() as closing:
    # Closing a checkpointer awaits its in-flight saves, also when an
    # exception ends training.
    ckpt = closing.enter_context(contextlib.closing(
        checkpointing.Checkpointer(workdir / 'checkpoints')))
    books = _books(runs, config, workdir, ckpt, state, local_evaluator,
                   closing)
    # Resume: the newest complete checkpoint of this workdir, if any,
    # restored where the fresh state lives (its shardings), after a shape
    # check.
    restored = ckpt.restore_latest(
        state.params, state.opt_state, signature,
        allow_other_data=config.get('resume_other_data', False))
    if restored is not None:
      latest = ckpt.directory / checkpointing.LATEST
      state = runs.resume(restored, state, books, latest)
      meta = restored[2]
      last_epoch = meta['epoch']
      changed = config_spec.config_changes(meta['config'], config)
      logging.info('resuming %s from %s after epoch %d%s', runs.label,
                   latest, last_epoch, f'; changed settings: {changed}'
                   if changed else '')
      # One rule for single runs and stacks: a setting that changes what
      # an epoch computes is said and recorded with the first epoch it
      # applies to (result.json 'changed_settings'); config.json holds the
      # new values.
      changed = config_spec.config_changes(
          meta['config'], config, ignore=config_spec.NOT_RESULT_KEYS)
      if changed:
        logging.warning('changed settings from epoch %d on: %s',
                        last_epoch + 1, changed)
        for book in books:
          book.record_change(last_epoch + 1, changed)
    # Only now that a resume (if any) is accepted: a refused one must not
    # have replaced the run's record of its settings.
    if stacked and chief:
      workdir_lib.write_text_atomic(workdir / 'config.json',
                                    config.to_json_best_effort(indent=2))
    for book in books:
      book.start(last_epoch)
      closing.callback(book.writer.close)
    # Successive halving (halving.py) freezes runs: they stop as an early
    # stop does, and stay stopped.
    for k in config.get('freeze_runs') or ():
      books[k].stopped = True
    # A run that stopped early stays stopped; others continue to
    # config.epochs.
    final_epoch = (last_epoch if all(b.stopped for b in books)
                   else config.epochs - 1)
    compiled = None
    if last_epoch < final_epoch:
      # Compiled ahead of the first epoch so that the compiler's freed heap
      # can go back to the OS before the program allocates its buffers.
      with console.transient('compiling the training epoch ...'):
        compiled = runs.compile(state)
      epoch_lib.release_freed_host_memory()
    memory = compiled and console.peak_memory_bytes(*compiled.programs)
    if chief and compiled:  # the study's Table 3 reads it (study_tables.py)
      workdir_lib.write_json_atomic(workdir / 'compiled.json', {
          'peak_bytes': memory and memory['peak'],
          'compile_s': compiled.compile_s})
    if chief:
      logging.info('%s', console.startup_block(
          devices=list(runner.mesh.devices.flat), dataset=dataset,
          n_params=sum(x.size for x in jax.tree.leaves(state.params)),
          n_steps=runs.n_steps, batch_size=runs.hp.batch_size,
          kernel=runs.hp.spmm_kernel, model=runs.label, workdir=workdir,
          epochs=(last_epoch + 1, final_epoch),
          memory=memory,
          compile_s=compiled and compiled.compile_s,
          cache=compiled.cache.describe() if compiled else ''))
    # The bar inside each epoch (progress.py): process 0.
    bar = closing.enter_context(progress_lib.EpochProgress(
        runs.n_steps, final_epoch, enabled=chief,
        log=lambda line: logging.info('%s', line)))
    # SIGINT/SIGTERM stop the loop between epochs.
    signals = closing.enter_context(signals_lib.StopSignals())
    last_epoch = _loop(config, runs, books, state, evaluator, ckpt, bar,
                       signals, signature, last_epoch, final_epoch)
  return _finish(config, workdir, runs, books, signals, last_epoch, ckpt)


def _loop(config, runs, books, state, evaluator, ckpt, bar, signals,
          signature, last_epoch: int, final_epoch: int) -> int:
  """The epochs; returns the last one trained."""
  stacked = not isinstance(runs, SingleRun)
  ks = console.log_ks(config.topk)
  epoch_times = []
  for epoch in range(last_epoch + 1, final_epoch + 1):
    active = [not b.stopped for b in books]
    if not any(active):
      break
    t0 = time.perf_counter()
    bar.start(epoch)
    state, parts, scores = runs.run_epoch(state, active, bar.update)
    train_time = time.perf_counter() - t0
    # Each run's optimizer steps so far (a scalar for one run).
    steps = np.asarray(jax.device_get(state.step)).reshape(-1)
    lines = []
    for k, book in enumerate(books):
      if active[k]:
        book.epochs_run = epoch + 1
        diverged = runbook.non_finite_error(parts[k], epoch,
                                            int(steps[k]) - runs.n_steps)
        if diverged is not None and not stacked:
          raise diverged
        if diverged is not None:  # The others go on; this keeps its best.
          logging.warning('run %d: %s', k, diverged)
          book.stopped, book.diverged = True, str(diverged)
          lines.append({'label': _label(runs, k), 'stopped': 'diverged'})
    if config.eval_embeddings == 'recompute':
      scores = runs.recompute_scores(state)
    t1 = time.perf_counter()
    for k, book in enumerate(books):
      if not active[k] or book.diverged:
        continue
      t_run = time.perf_counter()
      result = evaluator(*scores[k])
      eval_time = time.perf_counter() - t_run
      improved, stop = book.update(epoch, result)
      if improved:
        book.save_best(epoch, runs.run_state(state, k), scores[k])
      losses = {n: float(np.mean(v)) for n, v in parts[k].items()}
      record = {'epoch': epoch, 'step': int(steps[k]), 'loss': losses,
                'train_time_s': train_time}
      if stacked:  # The one program that trained every active run.
        record['stack_runs'] = len(books)
      record.update(eval_time_s=eval_time, valid=result['valid'],
                    test=result['test'], best_epoch=book.best['best_epoch'])
      book.writer.write(record)
      line = {'losses': losses, 'improved': improved,
              'valid': console.format_metrics(result['valid'], ks),
              'test': console.format_metrics(result['test'], ks)}
      if stacked:
        line.update(label=_label(runs, k),
                    stopped='early stop' if stop else '')
      lines.append(line)
    eval_time = time.perf_counter() - t1
    bar.finish(train_time + eval_time)
    epoch_times.append(train_time)
    if lines and (epoch % config.log_every_epochs == 0
                  or any(line.get('improved') for line in lines)
                  or any(b.stopped for a, b in zip(active, books) if a)):
      logging.info('%s', console.epoch_line(
          epoch=epoch, final_epoch=final_epoch, train_s=train_time,
          steps_per_s=runs.n_steps / train_time, eval_s=eval_time,
          eta_s=np.median(epoch_times) * (config.epochs - epoch - 1),
          runs=lines))
    last_epoch = epoch
    if (all(b.stopped for b in books) or signals.signum or epoch == final_epoch
        or (epoch + 1) % config.checkpoint_every_epochs == 0):
      ckpt.save_latest(epoch, state.params, state.opt_state,
                       runs.latest_meta(epoch, state, books, signature))
    if not stacked and books[0].stopped:
      logging.info('early stop: no improvement of valid %s for %d epochs',
                   config.valid_metric, books[0].stopper.bad_epochs)
    if signals.signum:
      break
  return last_epoch


def _label(runs, k: int) -> str:
  spec = runs.specs[k]
  return f'run {k} (seed {spec.seed}' + ''.join(
      f', {n}={v:g}' for n, v in spec.overrides.items()) + ')'


def _finish(config, workdir: pathlib.Path, runs, books, signals,
            last_epoch: int, ckpt) -> dict[str, Any]:
  """The result of the start, and result.json when training ended."""
  chief = distributed.is_chief()
  stacked = not isinstance(runs, SingleRun)
  ks = console.log_ks(config.topk)
  results = [b.result() for b in books]
  # The dataset's content digest, so that `report --compare` can tell two
  # datasets of the same name apart.
  digest = {'data_sha256': books[0].signature['data_sha256']}
  if not stacked:
    out = dict(results[0], epochs_run=last_epoch + 1, **digest)
  else:
    finished = [r for r in results if r['best_epoch'] >= 0]
    out = {'runs': [dict(r, run=s.index, seed=s.seed, overrides=s.overrides)
                    for r, s in zip(results, runs.specs)],
           # Over the runs that reached a best epoch (not one that
           # diverged in its first epoch).
           'summary': stats.summary_of_runs(finished) if finished else {},
           'epochs_run': last_epoch + 1, **digest}
  if signals.signum:
    logging.warning('%s: stopped after epoch %d; the checkpoint is in %s. '
                    'Run the same command again to resume.', signals.name,
                    last_epoch, ckpt.directory / checkpointing.LATEST)
    return dict(out, interrupted=signals.name)
  for k, (result, book) in enumerate(zip(results, books)):
    logging.info('best epoch%s %d: valid %s | test %s',
                 f' of {_label(runs, k)}' if stacked else '',
                 result['best_epoch'],
                 console.format_metrics(result['valid'], ks)
                 if result['valid'] else '-',
                 console.format_metrics(result['test'], ks)
                 if result['test'] else '-')
    if chief and stacked:
      workdir_lib.write_json_atomic(book.dir / 'result.json', result)
  if chief:
    workdir_lib.write_json_atomic(workdir / 'result.json', out)
  return out


if __name__ == '__main__':
  # `python -m mentor_jax.train`: the command line lives in main.py (which
  # imports this module under its package name).
  runpy.run_module('mentor_jax.main', run_name='__main__')
