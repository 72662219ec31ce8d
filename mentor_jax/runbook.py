"""A run's bookkeeping on the host: stopping, its best epoch and files.

One `RunBook` per run, for a single run and for each run of a stack alike:
MMRec's early stopping, the best epoch's metrics, its checkpoint and
per-user file, the run's writers, and the checkpoint meta that resuming
reads back. Nothing here is compiled.
"""

from __future__ import annotations

import io
import pathlib
from typing import Any

import ml_collections
import numpy as np

from mentor_jax import checkpointing
from mentor_jax import config_spec
from mentor_jax import datasets
from mentor_jax import errors
from mentor_jax import metrics as metrics_lib
from mentor_jax import rundirs
from mentor_jax import workdir as workdir_lib
from mentor_jax import writers as writers_lib


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


def non_finite_error(parts: dict[str, np.ndarray], epoch: int,
                     first_step: int) -> errors.TrainingDivergedError | None:
  """The error for the first step whose loss parts are not all finite.

  Args:
    parts: {name: [n]} the epoch's loss parts, one value per step.
    epoch: the epoch (0-based).
    first_step: the global step count before the epoch.

  Returns:
    None when every value is finite.
  """
  first_bad = {}
  for name in sorted(parts):
    bad = np.flatnonzero(~np.isfinite(np.asarray(parts[name]).reshape(-1)))
    if bad.size:
      first_bad[name] = int(bad[0])
  if not first_bad:
    return None
  step = min(first_bad.values())
  bad = [name for name, i in first_bad.items() if i == step]
  return errors.TrainingDivergedError(
      f'epoch {epoch}, step {first_step + step + 1} (step {step + 1} of the '
      f'epoch): loss part {bad[0]!r} became NaN or inf'
      + (f' (with {", ".join(map(repr, bad[1:]))})' if len(bad) > 1 else '')
      + '; training stopped, as the official trainer does. Check the '
      'learning rate and the loss weights (too large?), and the features '
      'and the .npz (python -m data_prep checks them when converting). The '
      'last checkpoint before this epoch is kept.')


def save_per_user_test(path: pathlib.Path,
                       evaluator: metrics_lib.Evaluator, user_emb,
                       item_emb, epoch: int) -> None:
  """The best epoch's per-user test metrics, for paired significance tests
  (report --compare), with that epoch (`rundirs.PER_USER_EPOCH`), so that a
  reader can tell it from another epoch's; written atomically, as every
  file of a workdir."""
  arrays = evaluator.per_user(user_emb, item_emb, 'test')
  arrays[rundirs.PER_USER_EPOCH] = np.asarray(epoch, np.int64)
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  workdir_lib.write_bytes_atomic(path, buffer.getvalue())


class RunBook:
  """One run's stopping, best epoch and files.

  Args:
    config: the run's own config (its seed and swept values).
    signature: `checkpointing.signature` of the run's parameters.
    directory: the run's folder (the workdir of a single run, runs/<k> of
      a stack): config.json, metrics.jsonl, result.json, per-user file.
    ckpt: the Checkpointer whose 'best' manager keeps the run's best epoch.
    evaluator: computes the per-user file.
    chief: whether this process writes files (process 0).
  """

  def __init__(self, config: ml_collections.ConfigDict, signature: dict,
               directory: pathlib.Path, ckpt: checkpointing.Checkpointer,
               evaluator: metrics_lib.Evaluator, chief: bool = True):
    self.config, self.signature = config, signature
    self.dir, self.ckpt, self.evaluator = directory, ckpt, evaluator
    self.chief = chief
    self.stopper = EarlyStopping(config.stopping_step)
    self.best = {'best_epoch': -1, 'valid': {}, 'test': {}}
    self.stopped = False
    self.epochs_run = 0
    self.diverged: str | None = None
    # Settings changed on a resume: [{'from_epoch', 'settings'}], kept in
    # the checkpoint meta and result.json (config.json holds the newest).
    self.changes: list[dict[str, Any]] = []
    self.writer: writers_lib.MetricWriter = writers_lib.MultiWriter([])

  def restore(self, meta: dict[str, Any], epochs_run: int) -> None:
    """Continues from a checkpoint meta's per-run fields."""
    saved = meta['early_stopping']
    self.stopper = EarlyStopping(self.stopper.patience, saved['best'],
                                 saved['bad_epochs'])
    self.best = meta['best']
    self.stopped = meta['stopped']
    self.epochs_run = meta.get('epochs_run', epochs_run)
    self.diverged = meta.get('diverged')
    self.changes = list(meta.get('changes', []))

  def record_change(self, from_epoch: int, settings: str) -> None:
    """Notes settings that a resume changed, from epoch `from_epoch` on."""
    self.changes.append({'from_epoch': from_epoch, 'settings': settings})

  def start(self, last_epoch: int) -> None:
    """Writes config.json, forgets what comes after `last_epoch` (the
    epochs a resume redoes) and opens the writers.

    On a resume the per-user file is written anew from the best step the
    checkpoint names: a kill between the best save and the next latest one
    can leave a file of a best epoch that the resume then trains again.
    """
    if self.chief:
      workdir_lib.write_text_atomic(self.dir / 'config.json',
                                    self.config.to_json_best_effort(indent=2))
    self.ckpt.drop_best_after(last_epoch)
    best_epoch = self.best['best_epoch']
    if self.chief and last_epoch >= 0 and best_epoch >= 0:
      save_per_user_test(self.dir / rundirs.PER_USER_FILE, self.evaluator,
                         *self.ckpt.restore_best_scores(best_epoch),
                         best_epoch)
    self.writer = writers_lib.run_writer(self.dir, resume_after=last_epoch,
                                         chief=self.chief)

  def update(self, epoch: int, result: dict[str, Any]) -> tuple[bool, bool]:
    """(improved, stop) after epoch `epoch`'s evaluation `result`."""
    # MMRec rounds metrics to 4 decimals before comparing them.
    value = round(result['valid'][self.config.valid_metric], 4)
    improved, stop = self.stopper.update(value)
    if improved:
      self.best = {'best_epoch': epoch, 'valid': result['valid'],
                   'test': result['test']}
    self.stopped = stop
    return improved, stop

  def state_meta(self, state: Any) -> dict[str, Any]:
    """The run's fields of a checkpoint meta (its train state: `state`)."""
    return {'step': int(state.step),
            'key': checkpointing.key_to_json(state.key),
            'early_stopping': {'best': self.stopper.best,
                               'bad_epochs': self.stopper.bad_epochs},
            'best': self.best, 'stopped': self.stopped,
            'changes': self.changes}

  def checkpoint_meta(self, epoch: int, state: Any) -> dict[str, Any]:
    """A single run's checkpoint meta: what resuming needs besides arrays."""
    config = self.config
    return {
        'format': checkpointing.FORMAT_VERSION, 'epoch': epoch,
        **self.state_meta(state),
        'eval_embeddings': config.eval_embeddings,
        'config': config_spec.config_to_json(config),
        'data_npz': str(
            datasets.resolve_data_path(config.data_npz).resolve()),
        'signature': self.signature,
    }

  def save_best(self, epoch: int, state: Any, scores) -> None:
    """The best checkpoint and the per-user test metrics of `epoch`."""
    # The ranked embeddings too: 'last_step' ones are not a function of
    # the saved params (checkpointing.py), and evaluate must be exact.
    self.ckpt.save_best(epoch, state.params, scores,
                        self.checkpoint_meta(epoch, state))
    if self.chief:
      save_per_user_test(self.dir / rundirs.PER_USER_FILE, self.evaluator,
                         *scores, epoch)

  def result(self) -> dict[str, Any]:
    out = dict(self.best, epochs_run=self.epochs_run)
    if self.diverged:
      out['diverged'] = self.diverged
    if self.changes:
      out['changed_settings'] = self.changes
    return out
