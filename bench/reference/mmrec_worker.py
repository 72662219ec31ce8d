"""Runs one of MMRec's own models (a user-supplied checkout) for timing.

Started with the torch interpreter, in a fresh process per workload (by
table3.py, or by hand); prints one `BENCH_RESULT <json>` line. The checkout
of enoche/MMRec (`--mmrec-src`) runs unmodified and is never copied here:

  git --git-dir=MIRROR archive HEAD | tar -x -C /work/ref/MMRec
  /work/refvenv/bin/python bench/reference/mmrec_worker.py \
      --mmrec-src /work/ref/MMRec --model vbpr --folder /work/bench_data/baby \
      --epochs 2

What runs is MMRec's own machinery, in `quick_start`'s order: `Config`
(overall.yaml, the dataset and model yaml, then our overrides), `RecDataset`
and its split, `TrainDataLoader` / `EvalDataLoader`, `init_seed`, the model
class and `Trainer`. The hyper-parameters are ONE cell per model,
`mmrec_settings.CELLS[model]` (our configs/baseline.py settings; no grid
search), plus any `--set KEY=VALUE`. A yaml grid axis left as a list is an
error, so that no run silently picks a cell.

Data: `--folder` holds `<name>.inter` (userID, itemID, x_label) and the
feature files. They are symlinked into a fresh scratch folder as MMRec's
layout `<root>/<name>/{<name>.inter, image_feat.npy, text_feat.npy}`
(`--t-feat audio_feat.npy` puts TikTok's acoustic features in the text
slot), and MMRec's own caches (LATTICE's dense item graphs, FREEDOM's
mm_adj) are written there and deleted at the end: nothing is written into
`--folder` or the checkout.

Timed, in this order:

* `--batches N`: `--warmup` untimed batches (the process's one-time
  costs), then, as an epoch starts: MMRec's per-epoch host work
  (`pre_epoch_processing`), the epoch's first batch (LATTICE rebuilds its
  learned item graph there, with gradient) and N later batches, each timed
  and each as in `Trainer._train_epoch` (negative sampling by the loader
  included). The epoch is EXTRAPOLATED as pre_epoch + first batch + median
  later batch x (batches per epoch - 1), and labelled so;
* `--epochs N`: N whole epochs as `Trainer.fit` times one
  (`pre_epoch_processing`, MMRec's own `Trainer._train_epoch`, the
  learning-rate scheduler step). Without --batches before them, the first
  also pays the one-time costs. With `--log-metrics`, each epoch is
  followed by `Trainer.evaluate` on valid and test (timed apart), and the
  per-epoch Recall/NDCG are in the result;
* `--eval-reps`: full evaluation, valid + test, via `Trainer.evaluate`.

Peak memory: `ru_maxrss` of this process (`getrusage`) in the result; the
parent adds its own wait4 measurement of the child (`peak_rss_gib`).

CPU shims (torch_shims.py; in this process only): `Tensor.cuda` is a no-op
without CUDA (LATTICE calls `.cuda()` on its fixed item graphs), numpy's
`np.float` aliases (MMRec's metrics), scipy's `dok_matrix._update` (the
adjacency builders of LightGCN, FREEDOM, BM3 and LGMRec), and empty stubs
for lmdb / torchvision / matplotlib when absent (imported, never called).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Any

_T_START = time.perf_counter()

# The device machine's Python holds jax next to torch, and bench.common
# reports jax's versions: a jax GPU client in this process would take most of
# the GPU's memory from the torch code being measured.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from bench import common  # pylint: disable=g-import-not-at-top
from bench.reference import mmrec_settings  # pylint: disable=g-import-not-at-top
from bench.reference import fit_loop  # pylint: disable=g-import-not-at-top
from bench.reference import torch_shims  # pylint: disable=g-import-not-at-top

# What the per-epoch log prints (all metrics are in the result).
LOGGED_METRICS = ('recall@10', 'recall@20', 'ndcg@10', 'ndcg@20')
# Models that read the feature files (BPR.yaml and LightGCN.yaml set
# is_multimodal_model False).
ID_ONLY = ('mfbpr', 'lightgcn', 'layergcn')
# DualGNN's user graph (preprocessing/dualgnn-gen-u-u-matrix.py writes it
# into the dataset folder; its dataset yamls name it so).
USER_GRAPH_FILE = 'user_graph_dict.npy'


class UsageError(ValueError):
  """Bad arguments or input files; the message says which and why."""


def parse_sets(items: list[str]) -> dict[str, Any]:
  """['reg_weight=1e-2', 'cf_model=mf'] -> {'reg_weight': 0.01, ...}."""
  out = {}
  for item in items:
    key, sep, raw = item.partition('=')
    if not sep or not key:
      raise UsageError(f'--set {item!r}: expected KEY=VALUE')
    try:
      out[key] = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      out[key] = raw
  return out


def layout(folder: pathlib.Path, name: str, v_feat: str, t_feat: str,
           need_features: bool, scratch: str | None) -> pathlib.Path:
  """MMRec's `<root>/<name>/` as symlinks in a new scratch root; returns root.

  Raises:
    UsageError: a file is missing or the .inter header lacks a column.
  """
  inter = folder / f'{name}.inter'
  if not inter.is_file():
    raise UsageError(f'{inter} not found: --folder must hold <name>.inter '
                     f'(--name {name!r})')
  with open(inter, encoding='utf-8') as f:
    header = f.readline().rstrip('\n').split('\t')
  missing = [c for c in ('userID', 'itemID', 'x_label') if c not in header]
  if missing:
    raise UsageError(f'{inter}: the tab-separated header lacks {missing} '
                     f'(found {header}); MMRec reads userID, itemID and the '
                     'x_label split (0 train, 1 valid, 2 test)')
  links = {f'{name}.inter': inter}
  # DualGNN's user-user graph, MMRec's preprocessing output, if present.
  if (folder / USER_GRAPH_FILE).is_file():
    links[USER_GRAPH_FILE] = folder / USER_GRAPH_FILE
  for slot, fname in (('image_feat.npy', v_feat), ('text_feat.npy', t_feat)):
    src = folder / fname
    if src.is_file():
      links[slot] = src
    elif need_features:
      raise UsageError(f'{src} not found: this model reads both feature '
                       f'files (MMRec slot {slot}; --v-feat / --t-feat name '
                       'them inside --folder)')
  root = pathlib.Path(tempfile.mkdtemp(prefix='mmrec_data_', dir=scratch))
  (root / name).mkdir()
  for slot, src in links.items():
    (root / name / slot).symlink_to(src.resolve())
  return root


def file_digest(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def train_batch(trainer, model, interaction) -> float:
  """One batch exactly as the body of MMRec's `Trainer._train_epoch`."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.nn.utils.clip_grad import clip_grad_norm_  # pylint: disable=g-import-not-at-top
  trainer.optimizer.zero_grad()
  interaction.clone()  # _train_epoch copies each batch (for its mg mode)
  losses = model.calculate_loss(interaction)
  if isinstance(losses, tuple):
    loss = sum(losses)
    value = float(sum(part.item() for part in losses))
  else:
    loss = losses
    value = float(losses.item())
  if torch.isnan(loss):
    raise FloatingPointError('NaN loss in a timed batch')
  loss.backward()
  if trainer.clip_grad_norm:
    clip_grad_norm_(model.parameters(), **trainer.clip_grad_norm)
  trainer.optimizer.step()
  return value


def check_one_cell(config, model: str) -> None:
  """Refuses a grid: every hyper-parameter axis must hold one value."""
  for key in config['hyper_parameters']:
    if isinstance(config[key], list):
      raise UsageError(
          f'MMRec {mmrec_settings.MMREC_MODEL[model]}: hyper-parameter '
          f'{key!r} is still the yaml grid {config[key]!r}; this harness '
          'runs one cell: add it to mmrec_settings.CELLS or pass --set '
          f'{key}=VALUE')


def _metrics(result: dict[str, float]) -> dict[str, float]:
  return {k: float(v) for k, v in result.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
  model_name = mmrec_settings.check_model(args.model)
  src = pathlib.Path(args.mmrec_src).resolve() / 'src'
  mmrec_class = mmrec_settings.MMREC_MODEL[model_name]
  model_file = src / 'models' / f'{mmrec_class.lower()}.py'
  if not (src / 'common' / 'trainer.py').is_file() or not model_file.is_file():
    raise UsageError(f'{model_file} or {src}/common/trainer.py not found: '
                     '--mmrec-src must be a checkout of enoche/MMRec')
  if args.log_metrics and args.batches:
    raise UsageError('--log-metrics trains whole epochs from the initial '
                     'model; --batches would train it first (use 0)')
  folder = pathlib.Path(args.folder).resolve()
  name = args.name or folder.name
  sets = parse_sets(args.set)

  torch_shims.limit_address_space(args.mem_limit_gib)
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  on_gpu = torch.cuda.is_available() and not args.cpu
  shims = []
  if not on_gpu:
    torch_shims.make_cuda_a_noop()
    shims.append('Tensor.cuda no-op')
  if args.threads:
    torch.set_num_threads(args.threads)
  shims += [f'stub {m}' for m in torch_shims.stub_unused_modules()]
  shims += [f'np.{a}' for a in torch_shims.restore_numpy_aliases()]
  if torch_shims.restore_dok_update():
    shims.append('dok_matrix._update')
  if model_name == 'dualgnn' and not (folder / USER_GRAPH_FILE).is_file():
    raise UsageError(f'{folder / USER_GRAPH_FILE} not found: MMRec\'s DualGNN '
                     'reads it; make it with MMRec\'s preprocessing/'
                     'dualgnn-gen-u-u-matrix.py')

  root = layout(folder, name, args.v_feat, args.t_feat,
                need_features=model_name not in ID_ONLY, scratch=args.scratch)
  cwd = os.getcwd()
  try:
    # MMRec's Config reads ./configs relative to the working directory.
    os.chdir(src)
    sys.path.insert(0, str(src))
    return _run_in_checkout(args, model_name, name, root, sets, on_gpu, shims,
                            np, torch, src, model_file)
  finally:
    os.chdir(cwd)
    shutil.rmtree(root, ignore_errors=True)  # only the scratch root we made


def _run_in_checkout(args, model_name, name, root, sets, on_gpu, shims, np,
                     torch, src, model_file) -> dict[str, Any]:
  # pylint: disable=g-import-not-at-top
  import utils
  from utils.configurator import Config
  from utils.utils import get_model, get_trainer, init_seed
  # pylint: enable=g-import-not-at-top

  settings = dict(mmrec_settings.CELLS[model_name], **sets)
  config_dict = dict(mmrec_settings.DATASET_KEYS,
                     user_graph_dict_file=USER_GRAPH_FILE,
                     inter_file_name=f'{name}.inter',
                     data_path=str(root) + os.sep, gpu_id=0, use_gpu=on_gpu,
                     **settings)
  config = Config(mmrec_settings.MMREC_MODEL[model_name], name, config_dict)
  check_one_cell(config, model_name)

  t0 = time.perf_counter()
  dataset, train_ds, train_data, valid_data, test_data = (
      fit_loop.quick_start_loaders(config, utils))
  init_seed(config['seed'])
  train_data.pretrain_setup()
  if model_name == 'layergcn' and torch_shims.alias_package(
      'models.common', 'common'):
    shims.append('models.common -> common (LayerGCN\'s ImRec import path)')
  model = get_model(config['model'])(config, train_data).to(config['device'])
  if torch_shims.unregister_result_embeds(model):
    shims.append('result_embed unregistered (as .to(cuda) does)')
  trainer = get_trainer()(config, model)
  setup_s = time.perf_counter() - t0
  rss_after_setup = torch_shims.ru_maxrss_gib()
  sync = torch.cuda.synchronize if on_gpu else (lambda: None)
  n_batches = len(train_data)
  print(f'# MMRec {config["model"]} on {name}: U={dataset.user_num} '
        f'I={dataset.item_num} n_train={len(train_ds)} batches/epoch='
        f'{n_batches}; setup {setup_s:.1f} s', flush=True)

  result: dict[str, Any] = {
      'impl': 'mmrec', 'model': model_name, 'mmrec_model': config['model'],
      'device': 'cuda' if on_gpu else 'cpu',
      'torch_threads': torch.get_num_threads(), 'dataset': name,
      'n_users': int(dataset.user_num), 'n_items': int(dataset.item_num),
      'n_train': len(train_ds), 'batches_per_epoch': n_batches,
      'settings': settings, 'shims': shims, 'setup_s': setup_s,
      'ru_maxrss_after_setup_gib': rss_after_setup,
      'mmrec_src': str(src.parent),
      'mmrec_files_sha256_16': {
          str(p.relative_to(src)): file_digest(p)
          for p in (model_file, src / 'common' / 'trainer.py',
                    src / 'utils' / 'dataloader.py')},
      'numpy': np.__version__,
      'float32_matmul_precision': torch.get_float32_matmul_precision(),
  }

  # Batches, each timed (the epoch is then extrapolated).
  guess = None
  if args.batches:
    model.train()
    it = iter(train_data)  # shuffles, as the epoch's for-loop does
    warmup = min(args.warmup, max(n_batches - 2, 0))
    n_timed = max(min(args.batches, n_batches - warmup - 1), 0)
    losses = []
    if warmup:  # the process's one-time costs (allocator, lazy inits)
      model.pre_epoch_processing()
      for b in range(warmup):
        losses.append(train_batch(trainer, model, next(it)))
        print(f'warm-up batch {b}: loss {losses[-1]:.4f}', flush=True)
    # An epoch starts here: its host work, then its first batch (LATTICE
    # builds its learned item graph in it), then later batches.
    t0 = time.perf_counter()
    model.pre_epoch_processing()
    pre_epoch_s = time.perf_counter() - t0
    times, first_s = [], None
    for b in range(1 + n_timed):
      t0 = time.perf_counter()
      losses.append(train_batch(trainer, model, next(it)))
      sync()
      dt = time.perf_counter() - t0
      if b == 0:
        first_s = dt
      else:
        times.append(dt)
      print(f'{"first" if b == 0 else "timed"} batch: {dt:.3f} s loss '
            f'{losses[-1]:.4f}', flush=True)
    # The loader rewinds only when it runs out; rewind it as its
    # StopIteration does, so that each epoch below is a whole one.
    train_data.pr = train_data.inter_pr = 0
    later = common.summarize(times)['median'] if times else first_s
    guess = pre_epoch_s + first_s + later * (n_batches - 1)
    result.update({
        'pre_epoch_s': pre_epoch_s, 'first_batch_s': first_s,
        'warmup_batches': warmup, 'batch_s': common.summarize(times),
        'batch_losses': losses, 'epoch_s_extrapolated': guess})

  # Whole epochs, as Trainer.fit runs and times them. With --time-limit, an
  # epoch that would end past 80 % of it (the rest is for the evaluation)
  # is not started; the result says so.
  epoch_times, epoch_losses, per_epoch, note = [], [], [], None
  for e in range(args.epochs):
    note = fit_loop.epoch_overruns(
        e, args.epochs, epoch_times[-1] if epoch_times else guess, _T_START,
        args.time_limit)
    if note:
      break
    dt, loss = fit_loop.fit_epoch(model, trainer, train_data, e, sync)
    epoch_times.append(dt)
    epoch_losses.append(loss)
    line = f'epoch {e}: train {dt:.2f} s loss {loss:.4f}'
    if args.log_metrics:
      t0 = time.perf_counter()
      valid = _metrics(trainer.evaluate(valid_data))
      test = _metrics(trainer.evaluate(test_data))
      sync()
      eval_dt = time.perf_counter() - t0
      per_epoch.append({'epoch': e, 'train_s': dt, 'loss': loss,
                        'eval_s': eval_dt, 'valid': valid, 'test': test})
      line += (f'; eval {eval_dt:.2f} s | valid ' + ' '.join(
          f'{k} {valid[k]:.4f}' for k in LOGGED_METRICS) + ' | test ' +
               ' '.join(f'{k} {test[k]:.4f}' for k in LOGGED_METRICS))
    print(line, flush=True)
  if epoch_times:
    result.update({'epoch_s': common.summarize(epoch_times),
                   'epoch_times_s': epoch_times,
                   'epoch_losses': epoch_losses})
  if per_epoch:
    result['metrics_per_epoch'] = per_epoch
  if note:
    result['epochs_note'] = note

  eval_times, first_eval, valid = [], None, None
  for r in range(args.eval_warmup + args.eval_reps):
    t0 = time.perf_counter()
    valid = _metrics(trainer.evaluate(valid_data))
    trainer.evaluate(test_data)
    sync()
    dt = time.perf_counter() - t0
    if r < args.eval_warmup:
      first_eval = dt
    else:
      eval_times.append(dt)
    print(f'eval {r}: {dt:.2f} s (valid + test)', flush=True)
  result['eval_s'] = common.summarize(eval_times)
  result['eval_first_s'] = first_eval
  if valid is not None:
    result['valid_recall@20'] = valid.get('recall@20')
  result['ru_maxrss_gib'] = torch_shims.ru_maxrss_gib()
  if on_gpu:
    result['cuda_device'] = torch.cuda.get_device_name(0)
    result['torch_cuda_peak_allocated_gib'] = (
        torch.cuda.max_memory_allocated() / common.GIB)
  return result


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--mmrec-src', default=os.environ.get('MMREC_SRC'),
                 help='checkout of enoche/MMRec (outside this repository; '
                 'default $MMREC_SRC)')
  p.add_argument('--model', required=True, choices=mmrec_settings.MODELS,
                 help='our model name; MMRec class in '
                 'mmrec_settings.MMREC_MODEL')
  p.add_argument('--folder', required=True,
                 help='folder with <name>.inter and the feature files')
  p.add_argument('--name', help='dataset name (default: the folder name)')
  p.add_argument('--v-feat', default='image_feat.npy',
                 help="file in --folder for MMRec's vision slot")
  p.add_argument('--t-feat', default='text_feat.npy',
                 help="file in --folder for MMRec's text slot (TikTok: "
                 'audio_feat.npy)')
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='MMRec config override on top of the cell')
  p.add_argument('--batches', type=int, default=0,
                 help='timed single batches (the epoch is extrapolated)')
  p.add_argument('--warmup', type=int, default=1,
                 help='untimed batches before the timed ones')
  p.add_argument('--epochs', type=int, default=1,
                 help='whole epochs timed after the batches')
  p.add_argument('--log-metrics', action='store_true',
                 help='evaluate valid and test after each epoch')
  p.add_argument('--time-limit', type=float, default=0,
                 help='seconds for this worker; whole epochs that would '
                 'not fit are left out (0: no limit)')
  p.add_argument('--eval-reps', type=int, default=1)
  p.add_argument('--eval-warmup', type=int, default=0)
  p.add_argument('--threads', type=int, default=0)
  p.add_argument('--cpu', action='store_true', help='ignore CUDA')
  p.add_argument('--mem-limit-gib', type=float, default=0,
                 help='cap on this process\'s address space (RLIMIT_AS), so '
                 'that a model too big for the machine fails here instead '
                 'of waking the OOM killer (0: none)')
  p.add_argument('--scratch', help='parent of the scratch data folder '
                 '(default: the system temp dir)')
  return p


def main() -> None:
  p = build_parser()
  args = p.parse_args()
  if not args.mmrec_src:
    p.error('--mmrec-src (or $MMREC_SRC) is required: a checkout of '
            'enoche/MMRec')
  try:
    result = run(args)
  except UsageError as e:
    print(f'mmrec_worker: {e}', file=sys.stderr)
    sys.exit(2)
  result['env'] = common.environment()
  common.emit_result(result)


if __name__ == '__main__':
  main()
