"""Trains MENTOR and reports full-ranking Recall/NDCG (MENTOR_SPEC §5, §6).

  python -m mentor_jax.train --config configs/clothing.py --workdir runs/c \
      --config.mask_weight_g=1e-3

One epoch is one compiled program: the shuffle, the negative sampling and all
its optimizer steps run under `lax.scan` on the device, with no host round
trip. After each epoch the valid and test splits are ranked against all items,
and training stops early on the validation metric as MMRec does.
Checkpoints (checkpointing.py) go to `<workdir>/checkpoints`; rerunning the
command resumes, and SIGINT/SIGTERM stop cleanly between epochs.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import json
import pathlib
import signal
import sys
import time
from typing import Any, NamedTuple

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from ml_collections import config_flags

from mentor_jax import checkpointing
from mentor_jax import console
from mentor_jax import config_spec
from mentor_jax import data as data_lib
from mentor_jax import datasets
from mentor_jax import distributed
from mentor_jax import events
from mentor_jax import errors
from mentor_jax import family as family_lib
from mentor_jax import mesh as mesh_lib
from mentor_jax import metrics as metrics_lib
from mentor_jax import progress as progress_lib
from mentor_jax import registry
from mentor_jax import report
from mentor_jax import workdir as workdir_lib
from mentor_jax.ops import sparse


class TrainState(NamedTuple):
  """Everything that changes during training, as one pytree."""

  params: Any  # nnx.State of the model's nnx.Param leaves
  opt_state: Any
  key: jax.Array  # raw uint32 PRNG key, advanced once per epoch
  step: jax.Array  # int32 optimizer steps taken


def create_optimizer(hp: family_lib.TrainHparams
                     ) -> optax.GradientTransformation:
  """Adam as MMRec's trainer: weight decay 0, its learning-rate schedule.

  A constant rate (factor 1, the default of overall.yaml) keeps optax's
  plain Adam state; a decaying one adds the step count the schedule reads.
  """
  if hp.lr_decay == 1.0:
    return optax.adam(hp.learning_rate, b1=0.9, b2=0.999, eps=1e-8)

  def learning_rate(count):
    epoch = (count // hp.steps_per_epoch).astype(jnp.float32)
    return hp.learning_rate * hp.lr_decay ** (epoch / hp.lr_decay_every)
  return optax.adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8)


def init_state(model: nnx.Module, hp: family_lib.TrainHparams,
               seed: int) -> tuple[nnx.GraphDef, Any, TrainState]:
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  opt_state = create_optimizer(hp).init(params)
  state = TrainState(params, opt_state, jax.random.PRNGKey(seed),
                     jnp.zeros((), jnp.int32))
  return graphdef, rest, state


def epoch_program(state: TrainState, rest: Any, data: data_lib.DeviceData, *,
                  graphdef: nnx.GraphDef, family: family_lib.ModelFamily,
                  hp: family_lib.TrainHparams, progress: bool = True):
  """One epoch of training: `train_epoch` before jit (stack.py vmaps it).

  With `progress`, every step tells the host it is done (`progress.py`);
  that callback reads only the step index, so results are the same bits.

  Returns:
    (new state, per-step loss parts {name: [n_steps]}, (user, item)
    embeddings of the last step's forward pass, which the official code
    evaluates with).
  """
  key, epoch_key = jax.random.split(state.key)
  batch_key, setup_key, steps_key = jax.random.split(epoch_key, 3)
  batches = data_lib.epoch_batches(batch_key, data, hp.batch_size,
                                   hp.max_row_len)
  batches = mesh_lib.constrain_batch(batches)  # No-op on one device.
  data = family.epoch_setup(data, setup_key, hp)
  tx = create_optimizer(hp)
  loss_fn = first_step_aware_loss(family, graphdef, rest, data, hp,
                                  state.params)

  def one_step(carry, xs):
    params, opt_state, _ = carry
    batch, index = xs
    step_key = jax.random.fold_in(steps_key, index)
    (_, (parts, scores)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params, batch, step_key, index)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if progress:
      progress_lib.report_step(index)
    return (params, opt_state, scores), parts

  n_steps = batches.users.shape[0]
  # The carry needs the embeddings' shapes before the first step runs.
  shapes = jax.eval_shape(lambda: loss_fn(state.params, jax.tree.map(
      lambda x: x[0], batches), steps_key, 0)[1][1])
  empty = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  (params, opt_state, scores), parts = jax.lax.scan(
      one_step, (state.params, state.opt_state, empty),
      (batches, jnp.arange(n_steps)))
  new_state = TrainState(params, opt_state, key, state.step + n_steps)
  return new_state, parts, scores


# One epoch of training as a single compiled program (`epoch_program`).
train_epoch = functools.partial(
    jax.jit, static_argnames=('graphdef', 'family', 'hp', 'progress'),
    donate_argnames=('state',))(epoch_program)


def first_step_aware_loss(family: family_lib.ModelFamily,
                          graphdef: nnx.GraphDef, rest: Any,
                          data: data_lib.DeviceData,
                          hp: family_lib.TrainHparams, start_params: Any):
  """(params, batch, key, step index) -> the family's LossOutput.

  A family with `loss_after_first_step` gets MMRec's schedule: `loss` in
  the epoch's first step, the cheaper loss on what `epoch_state` built
  from the epoch's starting parameters in the others (one `lax.cond`).
  """
  def plain(params, batch, step_key):
    return family.loss(nnx.merge(graphdef, params, rest), data, batch,
                       step_key, hp)

  if family.loss_after_first_step is None:
    return lambda params, batch, step_key, index: plain(params, batch,
                                                        step_key)
  epoch_state = family.epoch_state(
      nnx.merge(graphdef, start_params, rest), data, hp)

  def later(params, batch, step_key):
    return family.loss_after_first_step(
        nnx.merge(graphdef, params, rest), data, batch, step_key, hp,
        epoch_state)

  def loss_fn(params, batch, step_key, index):
    return jax.lax.cond(index == 0, plain, later, params, batch, step_key)
  return loss_fn


@functools.partial(jax.jit, static_argnames=('graphdef', 'family', 'hp'))
def clean_scores(params: Any, rest: Any, data: data_lib.DeviceData, *,
                 graphdef: nnx.GraphDef, family: family_lib.ModelFamily,
                 hp: family_lib.TrainHparams):
  """(user, item) embeddings with the current parameters."""
  model = nnx.merge(graphdef, params, rest)
  return family.score(model, data, hp)


class Evaluator:
  """Full-ranking Recall/NDCG on the valid and test splits."""

  def __init__(self, dataset: data_lib.Dataset, config):
    self._train = dataset.split('train')
    self._splits = {s: dataset.split(s) for s in ('valid', 'test')}
    self._ks = tuple(config.topk)
    self._chunk = int(config.eval_batch_size)

  def __call__(self, user_emb, item_emb) -> dict[str, dict[str, float]]:
    # One ranking pass serves both splits (they share the training mask).
    return metrics_lib.evaluate_splits(
        user_emb, item_emb, self._splits, *self._train, ks=self._ks,
        chunk_size=self._chunk)

  def per_user(self, user_emb, item_emb, split: str
               ) -> dict[str, np.ndarray]:
    """Per-user metrics of `split` (`metrics.per_user_metrics`)."""
    return metrics_lib.per_user_metrics(
        user_emb, item_emb, *self._splits[split], *self._train, ks=self._ks,
        chunk_size=self._chunk)


PER_USER_FILE = 'per_user_test.npz'


def save_per_user_test(path: pathlib.Path, evaluator: Evaluator, user_emb,
                       item_emb) -> None:
  """The best epoch's per-user test metrics, for paired significance tests
  (report --compare); written atomically, as every file of a workdir."""
  arrays = evaluator.per_user(user_emb, item_emb, 'test')
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  workdir_lib.write_bytes_atomic(path, buffer.getvalue())


class EarlyStopping:
  """MMRec's rule: stop after more than `patience` epochs without a strict
  improvement of the (rounded) validation metric."""

  def __init__(self, patience: int, best: float = -1.0, bad_epochs: int = 0):
    self.patience = patience
    self.best = best
    self.bad_epochs = bad_epochs

  def update(self, value: float) -> tuple[bool, bool]:
    """Returns (improved, stop)."""
    if value > self.best:
      self.best, self.bad_epochs = value, 0
      return True, False
    self.bad_epochs += 1
    return False, self.bad_epochs > self.patience


class MetricWriter:
  """Appends one JSON object per line to `<workdir>/metrics.jsonl`.

  Read back tolerantly (`workdir.read_jsonl`): a line cut short by a crash
  or a full disk is skipped, and dropped by the next resume.
  """

  def __init__(self, workdir: pathlib.Path):
    self._path = workdir / 'metrics.jsonl'

  def write(self, record: dict[str, Any]) -> None:
    if not distributed.is_chief():  # Multi-host: process 0 logs.
      return
    workdir_lib.append_line(self._path, json.dumps(record))

  def truncate_after(self, epoch: int) -> None:
    """Drops records of epochs after `epoch` (a resume replays them)."""
    if not distributed.is_chief():
      return
    workdir_lib.truncate_jsonl(
        self._path, lambda r: isinstance(r.get('epoch'), int)
        and r['epoch'] <= epoch)


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
  graphdef, rest, state = init_state(model, hp, config.seed)
  return Setup(family, hp, data, graphdef, rest, state)


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


def log_ks(topk) -> tuple[int, ...]:
  """The cut-offs shown in log lines: 10 and 20 when computed, else the
  first two of `topk` (every metric is in metrics.jsonl regardless)."""
  topk = tuple(topk)
  shown = tuple(k for k in (10, 20) if k in topk)
  return shown if len(shown) == 2 else topk[:2]


def format_metrics(m: dict[str, float], ks=(10, 20)) -> str:
  return ' '.join(f'R@{k}={m[f"recall@{k}"]:.4f} N@{k}={m[f"ndcg@{k}"]:.4f}'
                  for k in ks)


def non_finite_error(parts: dict[str, np.ndarray], epoch: int,
                     first_step: int) -> errors.TrainingDivergedError | None:
  """The error for the first step whose loss parts are not all finite.

  Args:
    parts: {name: [n_steps]} per-step loss parts of one epoch.
    epoch: the epoch (0-based).
    first_step: the global step count before the epoch.

  Returns:
    None when every value is finite.
  """
  names = sorted(parts)
  finite = np.stack([np.isfinite(np.asarray(parts[k])).reshape(-1)
                     for k in names])
  if finite.all():
    return None
  step = int(np.argmax(~finite.all(axis=0)))
  bad = [k for k, ok in zip(names, finite[:, step]) if not ok]
  return errors.TrainingDivergedError(
      f'epoch {epoch}, step {first_step + step + 1} (step {step + 1} of the '
      f'epoch): loss part {bad[0]!r} became NaN or inf'
      + (f' (with {", ".join(map(repr, bad[1:]))})' if len(bad) > 1 else '')
      + '; training stopped, as the official trainer does. Check the '
      'learning rate and the loss weights (too large?), and the features '
      'and the .npz (python -m data_prep checks them when converting). The '
      'last checkpoint before this epoch is kept.')


class BestEpoch:
  """A run's early stopping and best epoch, and that epoch's files.

  One for a single run, one per run of a stack (stack.py).
  """

  def __init__(self, config: ml_collections.ConfigDict, signature: dict,
               ckpt: checkpointing.Checkpointer, directory: pathlib.Path,
               evaluator: Evaluator):
    self.config, self.signature = config, signature
    self.ckpt, self.directory, self.evaluator = ckpt, directory, evaluator
    self.stopper = EarlyStopping(config.stopping_step)
    self.best = {'best_epoch': -1, 'valid': {}, 'test': {}}

  def restore(self, meta: dict[str, Any]) -> None:
    """Continues from a checkpoint's `early_stopping` and `best`."""
    saved = meta['early_stopping']
    self.stopper = EarlyStopping(self.stopper.patience, saved['best'],
                                 saved['bad_epochs'])
    self.best = meta['best']

  def update(self, epoch: int, result: dict[str, Any]) -> tuple[bool, bool]:
    """(improved, stop) after epoch `epoch`'s evaluation `result`."""
    # MMRec rounds metrics to 4 decimals before comparing them.
    value = round(result['valid'][self.config.valid_metric], 4)
    improved, stop = self.stopper.update(value)
    if improved:
      self.best = {'best_epoch': epoch, 'valid': result['valid'],
                   'test': result['test']}
    return improved, stop

  def meta(self, epoch: int, state: TrainState,
           stopped: bool) -> dict[str, Any]:
    return checkpoint_meta(self.config, self.signature, epoch, state,
                           self.stopper, self.best, stopped)

  def save(self, epoch: int, state: TrainState, scores,
           stopped: bool) -> None:
    """The best checkpoint and the per-user test metrics of `epoch`."""
    # The ranked embeddings too: 'last_step' ones are not a function of
    # the saved params (checkpointing.py), and evaluate must be exact.
    self.ckpt.save_best(epoch, state.params, scores,
                        self.meta(epoch, state, stopped))
    if distributed.is_chief():
      save_per_user_test(self.directory / PER_USER_FILE, self.evaluator,
                         *scores)


def checkpoint_meta(config: ml_collections.ConfigDict, signature: dict,
                    epoch: int, state: TrainState, stopper: EarlyStopping,
                    best: dict[str, Any], stopped: bool) -> dict[str, Any]:
  """The JSON part of a checkpoint: what resuming needs besides arrays."""
  return {
      'format': checkpointing.FORMAT_VERSION, 'epoch': epoch,
      'step': int(state.step), 'key': checkpointing.key_to_json(state.key),
      'early_stopping': {'best': stopper.best,
                         'bad_epochs': stopper.bad_epochs},
      'best': best, 'stopped': stopped,
      'eval_embeddings': config.eval_embeddings,
      'config': checkpointing.config_to_json(config),
      'data_npz': str(
          datasets.resolve_data_path(config.data_npz).resolve()),
      'signature': signature,
  }


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains with early stopping; returns the best epoch's metrics.

  Returns:
    {'best_epoch', 'valid', 'test', 'epochs_run'}: valid and test metrics
    at the epoch with the best validation metric, plus 'interrupted' (the
    signal's name) when SIGINT/SIGTERM stopped the run early. With
    checkpoints in `<workdir>/checkpoints/latest`, training resumes after the
    newest one and ends exactly as an uninterrupted run would.
  """
  # Every key checked before anything is loaded, compiled or written.
  check_config(config)
  # Scale-out (distributed.py): multi-host start-up and the device mesh,
  # before any computation. Only process 0 writes files.
  runner = distributed.Runner.from_config(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  with contextlib.ExitStack() as stack:
    if distributed.is_chief():
      # One trainer per workdir: a second one is refused, naming the first.
      stack.enter_context(workdir_lib.Lock(workdir))
    return _train_locked(config, workdir, runner)


def _train_locked(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                  runner: distributed.Runner) -> dict[str, Any]:
  """`train_and_evaluate` once the config is valid and the workdir ours."""
  if stack_requested(config):
    # stack.py builds on this module; imported here, not at the top.
    from mentor_jax import stack  # pylint: disable=g-import-not-at-top
    return stack.train_locked(config, workdir, runner)
  dataset = datasets.load_for_config(config)
  family, hp, data, graphdef, rest, state = setup(config, dataset)
  # Scale-out: global arrays on the mesh, the epoch and the evaluation with
  # explicit shardings; all identities on one device in one process.
  state, rest, data = runner.place(state, rest, data)
  run_scores = runner.wrap_scores(clean_scores)
  evaluator_local = Evaluator(dataset, config)
  evaluator = runner.evaluator(dataset, config, evaluator_local)
  writer = MetricWriter(workdir)
  n_steps = data_lib.steps_per_epoch(dataset.n_train, hp.batch_size)
  last_epoch, stopped = -1, False
  # Resume: the newest complete checkpoint of this workdir, if any, restored
  # where the fresh state lives (its shardings), after a shape check.
  sig = checkpointing.signature(config.model, dataset, state.params)
  ckpt = checkpointing.Checkpointer(workdir / 'checkpoints')
  tracker = BestEpoch(config, sig, ckpt, workdir, evaluator_local)
  try:
    restored = ckpt.restore_latest(
        state.params, state.opt_state, sig,
        allow_other_data=config.get('resume_other_data', False))
  except BaseException:
    ckpt.close()  # Release Orbax's threads before reporting the mismatch.
    raise
  # Only now that a resume (if any) is accepted: a refused one must not
  # have replaced the run's record of its settings.
  if distributed.is_chief():
    workdir_lib.write_text_atomic(workdir / 'config.json',
                                  config.to_json_best_effort(indent=2))
  if restored is not None:
    params, opt_state, meta = restored
    step = np.asarray(meta['step'], state.step.dtype)
    state = TrainState(params, opt_state,
                       checkpointing.key_from_json(meta['key'], state.key),
                       checkpointing.put_like(step, state.step))
    tracker.restore(meta)
    last_epoch, stopped = meta['epoch'], meta['stopped']
    changed = checkpointing.config_changes(meta['config'], config)
    logging.info('resuming from %s after epoch %d (step %d)%s',
                 ckpt.directory / checkpointing.LATEST, last_epoch,
                 meta['step'], f'; changed settings: {changed}'
                 if changed else '')
  # Epochs after the restored one are replayed: forget their records.
  ckpt.drop_best_after(last_epoch)
  writer.truncate_after(last_epoch)
  # A run that stopped early stays stopped; others continue to config.epochs.
  final_epoch = last_epoch if stopped else config.epochs - 1
  compile_s = memory = None
  if last_epoch < final_epoch:
    # Compiled ahead of the first epoch so that the compiler's freed heap can
    # go back to the OS before the program allocates its buffers.
    t0 = time.perf_counter()
    with console.transient('compiling the training epoch ...'):
      run_epoch = runner.compile_epoch(train_epoch, state, rest, data,
                                       graphdef=graphdef, family=family,
                                       hp=hp)
    compile_s = time.perf_counter() - t0
    memory = console.peak_memory_bytes(run_epoch)
    release_freed_host_memory()
  chief = distributed.is_chief()
  if chief:
    logging.info('%s', console.startup_block(
        devices=list(runner.mesh.devices.flat), dataset=dataset,
        n_params=sum(x.size for x in jax.tree.leaves(state.params)),
        n_steps=n_steps, batch_size=hp.batch_size, kernel=hp.spmm_kernel,
        model=config.model, workdir=workdir,
        epochs=(last_epoch + 1, final_epoch), memory=memory,
        compile_s=compile_s))
  # The bar inside each epoch (progress.py) and the TensorBoard events, a
  # view of metrics.jsonl replayed at each start (events.py): process 0.
  bar = progress_lib.EpochProgress(n_steps, final_epoch, enabled=chief,
                                   log=lambda line: logging.info('%s', line))
  board = (events.TensorBoardWriter(workdir, report.read_metrics(workdir))
           if chief else events.NullWriter())
  epoch_times = []
  ks = log_ks(config.topk)
  # SIGINT/SIGTERM stop the loop between epochs; closing the checkpointer
  # awaits in-flight saves, also when an exception ends training.
  with checkpointing.StopSignals() as signals, contextlib.closing(ckpt), \
      contextlib.closing(board), bar:
    for epoch in range(last_epoch + 1, final_epoch + 1):
      t0 = time.perf_counter()
      bar.start(epoch)
      state, parts, scores = run_epoch(state, rest, data)
      parts = jax.device_get(parts)
      train_time = time.perf_counter() - t0
      losses = {k: float(np.mean(v)) for k, v in parts.items()}
      diverged = non_finite_error(parts, epoch, int(state.step) - n_steps)
      if diverged is not None:
        raise diverged
      if config.eval_embeddings == 'recompute':
        scores = run_scores(state.params, rest, data, graphdef=graphdef,
                            family=family, hp=hp)
      t1 = time.perf_counter()
      result = evaluator(*scores)
      eval_time = time.perf_counter() - t1
      bar.finish(train_time + eval_time)
      epoch_times.append(train_time)
      improved, stop = tracker.update(epoch, result)
      if improved:
        tracker.save(epoch, state, scores, stop)
      steps_per_s = n_steps / train_time
      eta = np.median(epoch_times) * (config.epochs - epoch - 1)
      record = {'epoch': epoch, 'step': int(state.step), 'loss': losses,
                'train_time_s': train_time, 'eval_time_s': eval_time,
                'valid': result['valid'], 'test': result['test'],
                'best_epoch': tracker.best['best_epoch']}
      writer.write(record)
      board.write(record)
      if epoch % config.log_every_epochs == 0 or improved or stop:
        logging.info('%s', console.epoch_line(
            epoch=epoch, final_epoch=final_epoch, losses=losses,
            train_s=train_time, steps_per_s=steps_per_s, eval_s=eval_time,
            eta_s=eta, valid=format_metrics(result['valid'], ks),
            test=format_metrics(result['test'], ks), improved=improved))
      last_epoch = epoch
      if (stop or signals.signum or epoch == final_epoch
          or (epoch + 1) % config.checkpoint_every_epochs == 0):
        ckpt.save_latest(epoch, state.params, state.opt_state,
                         tracker.meta(epoch, state, stop))
      if stop:
        logging.info('early stop: no improvement of valid %s for %d epochs',
                     config.valid_metric, tracker.stopper.bad_epochs)
        break
      if signals.signum:
        break
  result = dict(tracker.best, epochs_run=last_epoch + 1)
  if signals.signum:
    logging.warning('%s: stopped after epoch %d; the checkpoint is in %s. '
                    'Run the same command again to resume.', signals.name,
                    last_epoch, ckpt.directory / checkpointing.LATEST)
    return dict(result, interrupted=signals.name)
  logging.info('best epoch %d: valid %s | test %s', result['best_epoch'],
               format_metrics(result['valid'], ks),
               format_metrics(result['test'], ks))
  if distributed.is_chief():
    workdir_lib.write_json_atomic(workdir / 'result.json', result)
  return result


FLAGS = flags.FLAGS
# Defined once per process: `python -m mentor_jax.train` runs this file as
# __main__ and then imports it as mentor_jax.train (below, and stack.py).
if 'config' not in FLAGS:
  config_flags.DEFINE_config_file(
      'config', None, 'Path to a config file (configs/*.py).',
      lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for logs and checkpoints.')
  flags.DEFINE_bool('debug', False, 'Show the traceback of an error.')


def main(argv):
  del argv
  config = FLAGS.config
  if config is None:
    raise app.UsageError('--config is required, e.g. configs/small.py')
  workdir = FLAGS.workdir or f'runs/{config.dataset}'
  checkpointing.quiet_orbax_logs()

  def run() -> int:
    result = train_and_evaluate(config, workdir)
    if 'interrupted' in result:
      # The shell's convention for "ended by this signal" (130, 143), so
      # that `train && evaluate` does not go on as if training had finished.
      return 128 + signal.Signals[result['interrupted']].value
    return 0

  sys.exit(errors.run_cli(run, debug=FLAGS.debug))


def cli() -> None:
  """`mentor-train` and `python -m mentor_jax.train`.

  `--config` also takes a shipped config's name (console.resolve_config_arg).
  """
  console.run_config_command(main)


if __name__ == '__main__':
  # Run the package's copy of this module, the one stack.py imports, so
  # that one set of functions (and jit caches) serves the whole run.
  # pylint: disable-next=g-import-not-at-top
  from mentor_jax import train as package_train
  package_train.cli()
