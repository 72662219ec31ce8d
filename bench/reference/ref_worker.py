"""Runs the OFFICIAL MENTOR code (a user-supplied checkout) for timing.

Started by `run_reference.py` with the torch interpreter, in a fresh process
per workload; prints one `BENCH_RESULT <json>` line. Nothing in the checkout
is modified. In this process only (the shared shims are in torch_shims.py):

* `torch.Tensor.cuda` becomes a no-op when CUDA is absent: the perturbed GCN
  branch calls `.cuda()` unconditionally (MENTOR_SPEC §0.1 item 11), which is
  the only thing that stops the official code from running on a CPU;
* the `result_embed*` caches are unregistered as parameters, which is what
  `.to('cuda')` does implicitly on a GPU
  (`torch_shims.unregister_result_embeds`);
* numpy's removed aliases `np.float` etc. are restored (the official
  metrics use them; it targets numpy < 1.24);
* modules the official code imports but never uses on the training and
  evaluation path (lmdb, torchvision, matplotlib: image-loading and
  plotting helpers) are replaced by empty stubs if they are not installed.

Two ways to time training, both in one run if asked:

* `--batches N` (after `--warmup` batches): `Trainer._train_epoch`'s body,
  batch by batch (zero_grad, calculate_loss, .item(), NaN check, backward,
  step), so that each batch can be timed; the epoch is then EXTRAPOLATED
  (pre_epoch_processing + median batch x batches per epoch);
* `--epochs N`: N whole epochs, each as `Trainer.fit` runs one
  (`pre_epoch_processing`, the official `Trainer._train_epoch` itself, the
  learning-rate scheduler step), timed until the device is idle.

Evaluation is `Trainer.evaluate` itself. On a GPU the peak device memory is
torch's own count (`torch.cuda.max_memory_allocated`, and the allocator's
reserved peak), over the whole process.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

_T_START = time.perf_counter()

# The device machine's Python holds jax next to torch, and bench.common
# reports jax's versions: a jax GPU client in this process would take most of
# the GPU's memory from the torch code being measured.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from bench import common  # pylint: disable=g-import-not-at-top
from bench.reference import fit_loop  # pylint: disable=g-import-not-at-top
from bench.reference import torch_shims  # pylint: disable=g-import-not-at-top

# The first cell of the shipped grid (MENTOR.yaml, MENTOR_SPEC §3).
FIRST_CELL = {'learning_rate': 1e-4, 'reg_weight': 1e-3, 'dropout': 0.5,
              'mask_weight_f': 1.5, 'mask_weight_g': 1e-4,
              'align_weight': 0.1, 'temp': 0.2, 'seed': 999}


def run(args: argparse.Namespace) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  src = pathlib.Path(args.mentor_src).resolve() / 'src'
  if not (src / 'models' / 'mentor.py').is_file():
    raise FileNotFoundError(f'{src}/models/mentor.py not found: --mentor-src '
                            'must be a clone of Jinfeng-Xu/MENTOR')
  on_gpu = torch.cuda.is_available() and not args.cpu
  if not on_gpu:
    torch_shims.make_cuda_a_noop()  # see module docstring
  if args.threads:
    torch.set_num_threads(args.threads)
  # The shims of the module docstring (bench/reference/torch_shims.py).
  torch_shims.stub_unused_modules()
  torch_shims.restore_numpy_aliases()
  # The official Config reads ./configs relative to the working directory.
  os.chdir(src)
  sys.path.insert(0, str(src))
  import utils_package  # pylint: disable=g-import-not-at-top
  from utils_package.configurator import Config  # pylint: disable=g-import-not-at-top
  from utils_package.utils import get_model, get_trainer, init_seed  # pylint: disable=g-import-not-at-top

  config_dict = dict(FIRST_CELL, gpu_id=0, use_gpu=on_gpu,
                     data_path=str(pathlib.Path(args.data_path)) + os.sep)
  config = Config('MENTOR', args.dataset, config_dict)
  init_seed(config['seed'])

  t0 = time.perf_counter()
  dataset, train_ds, train_data, valid_data, test_data = (
      fit_loop.quick_start_loaders(config, utils_package))
  train_data.pretrain_setup()
  model = get_model(config['model'])(config, train_data).to(config['device'])
  if not on_gpu:
    torch_shims.unregister_result_embeds(model)
  trainer = get_trainer()(config, model)
  setup_s = time.perf_counter() - t0
  sync = torch.cuda.synchronize if on_gpu else (lambda: None)

  # Per-epoch host work of the official loop (user-graph top-k sampling).
  model.train()
  t0 = time.perf_counter()
  model.pre_epoch_processing()
  pre_epoch_s = time.perf_counter() - t0

  n_batches = len(train_data)
  want = min(args.warmup + args.batches, n_batches)
  times, losses = [], []
  it = iter(train_data)
  for b in range(want):
    t0 = time.perf_counter()
    interaction = next(it)  # includes the dataloader's negative sampling
    trainer.optimizer.zero_grad()
    loss = model.calculate_loss(interaction)
    losses.append(loss.item())
    if torch.isnan(loss):
      raise FloatingPointError(f'NaN loss at batch {b}')
    loss.backward()
    trainer.optimizer.step()
    sync()
    dt = time.perf_counter() - t0
    if b >= args.warmup:
      times.append(dt)
    print(f'batch {b}: {dt:.2f} s loss {losses[-1]:.4f}', flush=True)
  # The loader is its own iterator and rewinds only when it runs out; rewind
  # it as its StopIteration does, so that each epoch below is a whole one.
  train_data.pr = train_data.inter_pr = 0

  # Whole epochs, as Trainer.fit runs them (without its evaluation). With
  # --time-limit, an epoch that would end past 80 % of it (the rest is for
  # the evaluation) is not started; the result says so.
  epoch_times, epoch_losses, epochs_note = [], [], None
  if times:
    guess = pre_epoch_s + common.summarize(times)['median'] * n_batches
  else:
    guess = None
  for e in range(args.epochs):
    epochs_note = fit_loop.epoch_overruns(
        e, args.epochs, epoch_times[-1] if epoch_times else guess, _T_START,
        args.time_limit)
    if epochs_note:
      break
    dt, loss = fit_loop.fit_epoch(model, trainer, train_data, e, sync)
    epoch_times.append(dt)
    epoch_losses.append(loss)
    print(f'epoch {e}: {dt:.2f} s loss {epoch_losses[-1]:.4f}', flush=True)

  eval_times, first_eval = [], None
  for r in range(args.eval_warmup + args.eval_reps):
    t0 = time.perf_counter()
    valid = trainer.evaluate(valid_data)
    trainer.evaluate(test_data)
    sync()
    dt = time.perf_counter() - t0
    if r < args.eval_warmup:
      first_eval = dt
    else:
      eval_times.append(dt)
    print(f'eval {r}: {dt:.2f} s', flush=True)

  result = {
      'impl': 'official', 'device': 'cuda' if on_gpu else 'cpu',
      'torch_threads': torch.get_num_threads(), 'dataset': args.dataset,
      'n_users': int(dataset.user_num), 'n_items': int(dataset.item_num),
      'n_train': len(train_ds), 'batches_per_epoch': n_batches,
      'setup_s': setup_s, 'pre_epoch_s': pre_epoch_s,
      'warmup_batches': args.warmup, 'eval_first_s': first_eval,
      'eval_s': common.summarize(eval_times),
      'valid_recall@10': float(valid.get('recall@10', float('nan'))),
      'losses': losses, 'numpy': np.__version__,
      # torch's default keeps float32 matmuls strict (no TF32) since 1.12.
      'float32_matmul_precision': torch.get_float32_matmul_precision(),
      'cuda_matmul_allow_tf32': bool(torch.backends.cuda.matmul.allow_tf32),
  }
  if times:
    step = common.summarize(times)
    result['batch_s'] = step
    result['epoch_s_extrapolated'] = pre_epoch_s + step['median'] * n_batches
  if epoch_times:
    result['epoch_s'] = common.summarize(epoch_times)
    result['epoch_times_s'] = epoch_times
    result['epoch_losses'] = epoch_losses
  if epochs_note:
    result['epochs_note'] = epochs_note
  if on_gpu:
    result['cuda_device'] = torch.cuda.get_device_name(0)
    result['torch_cuda_peak_allocated_gib'] = (
        torch.cuda.max_memory_allocated() / common.GIB)
    result['torch_cuda_peak_reserved_gib'] = (
        torch.cuda.max_memory_reserved() / common.GIB)
  return result


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--mentor-src', required=True)
  p.add_argument('--data-path', required=True,
                 help='folder holding <dataset>/<dataset>.inter etc.')
  p.add_argument('--dataset', default='baby')
  p.add_argument('--batches', type=int, default=5,
                 help='timed single batches (epoch extrapolated from them)')
  p.add_argument('--warmup', type=int, default=1,
                 help='untimed batches before everything else')
  p.add_argument('--epochs', type=int, default=0,
                 help='whole epochs timed after the batches')
  p.add_argument('--time-limit', type=float, default=0,
                 help='seconds for this worker; whole epochs that would '
                 'not fit are left out (0: no limit)')
  p.add_argument('--eval-reps', type=int, default=2)
  p.add_argument('--eval-warmup', type=int, default=1)
  p.add_argument('--threads', type=int, default=0)
  p.add_argument('--cpu', action='store_true', help='ignore CUDA')
  args = p.parse_args()
  result = run(args)
  result['env'] = common.environment()
  common.emit_result(result)


if __name__ == '__main__':
  main()
