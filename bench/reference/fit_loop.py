"""The pieces of the reference `quick_start` and `Trainer.fit` that the
workers run: ref_worker.py (the official MENTOR code) and mmrec_worker.py
(MMRec, whose trainer MENTOR's is a copy of). Each piece does what the
reference code does, in its order; only the timing is ours.
"""

from __future__ import annotations

import importlib
import time
import types
from typing import Any, Callable


def quick_start_loaders(config, utils_package: types.ModuleType):
  """The reference `quick_start`'s data path, without its logging.

  `utils_package` is the checkout's package of the data classes (MMRec's
  `utils`, the official MENTOR code's `utils_package`); its `dataset` and
  `dataloader` modules are imported from it. Returns (dataset, train_ds,
  train_data, valid_data, test_data). The seed is left to the caller: the
  two codes call `init_seed` at different points, and each worker keeps
  its own code's.
  """
  datasets = importlib.import_module(f'{utils_package.__name__}.dataset')
  loaders = importlib.import_module(f'{utils_package.__name__}.dataloader')
  dataset = datasets.RecDataset(config)
  train_ds, valid_ds, test_ds = dataset.split()
  # quick_start logs str() of each dataset; __str__ sets `inter_num`, which
  # the data loaders read, so the same calls are needed here.
  for ds in (dataset, train_ds, valid_ds, test_ds):
    str(ds)
  train_data = loaders.TrainDataLoader(
      config, train_ds, batch_size=config['train_batch_size'], shuffle=True)
  valid_data, test_data = (
      loaders.EvalDataLoader(config, ds, additional_dataset=train_ds,
                             batch_size=config['eval_batch_size'])
      for ds in (valid_ds, test_ds))
  return dataset, train_ds, train_data, valid_data, test_data


def fit_epoch(model: Any, trainer: Any, train_data: Any, epoch: int,
              sync: Callable[[], None]) -> tuple[float, float]:
  """Epoch `epoch` as `Trainer.fit` runs and times it.

  Timed: `pre_epoch_processing`, the trainer's `_train_epoch`, the
  learning-rate scheduler's step, until the device is idle. Then
  `post_epoch_processing`, outside fit's timed span as there.

  Returns:
    (seconds, loss): the loss summed over its parts, as fit logs it.

  Raises:
    FloatingPointError: a NaN batch (what fit checks).
  """
  import torch  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  model.pre_epoch_processing()
  train_loss, _ = trainer._train_epoch(train_data, epoch)  # pylint: disable=protected-access
  if torch.is_tensor(train_loss):  # _train_epoch returns the NaN loss
    raise FloatingPointError(f'NaN loss in epoch {epoch}')
  trainer.lr_scheduler.step()
  sync()
  seconds = time.perf_counter() - t0
  model.post_epoch_processing()
  loss = float(sum(train_loss) if isinstance(train_loss, tuple)
               else train_loss)
  return seconds, loss


def epoch_overruns(epoch: int, n_epochs: int, predicted_s: float | None,
                   started: float, time_limit_s: float) -> str | None:
  """Why epoch `epoch` should not start under `--time-limit`, or None.

  An epoch that would end past 80 % of the limit is not started (the rest
  is for the evaluation); `started` is the process's perf_counter start.
  """
  if not time_limit_s or predicted_s is None:
    return None
  if time.perf_counter() - started + predicted_s <= 0.8 * time_limit_s:
    return None
  return (f'{epoch} of {n_epochs} epochs: the next (~{predicted_s:.0f} s) '
          f'would end past 80% of --time-limit {time_limit_s:.0f} s')
