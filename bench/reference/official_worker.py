"""Runs the OFFICIAL DiffMM or MMSSL code on an MMRec folder, epoch by epoch.

Started with the torch interpreter, one codebase per process (both codes
have top-level modules that would clash); prints one `BENCH_RESULT <json>`
line with, per epoch: the training loss as the official code logs it, the
official test pass's Recall/NDCG/Precision@K and the seconds taken.

  /work/refvenv/bin/python bench/reference/official_worker.py \
      --codebase diffmm --src /work/ref/DiffMM --preset tiktok \
      --folder ../shared/data/tiktok --t-feat audio_feat.npy \
      --epochs 50 --seed 421
  ... --codebase mmssl --src /work/ref/MMSSL/MMSSL --preset tiktok ...

The checkouts run unmodified and are never copied (their modules are
imported from `--src`, without writing bytecode). The folder is converted
(official_data.py) into a scratch directory that becomes the working
directory, and which is deleted at the end.

DiffMM (Main.py): argv `--data baby --epoch N --seed S` + the preset (the
README's command line for that dataset; `tiktok`: --reg 1e-4 --ssl_reg 1e-2
--trans 1 --e_loss 0.1 --cl_method 1) + `--set`. TWO MODALITIES: DiffMM's
`--data tiktok` adds a third (audio) modality; its code reads `args.data`
only to pick the folder ./Datasets/<data>/ and to switch that third
modality on (DataHandler.py, Main.py), so the files are written to
./Datasets/baby/ and `--data baby` runs the same code with image + second
modality (the second in the text slot, `text_feat.npy`): no other setting
follows from `--data`. Then what Main.py's `__main__` and `Coach.run` do:
`seed_it`, `DataHandler().LoadData()`, `Coach`, `prepareModel`, and per
epoch the official `trainEpoch()` and `testEpoch()` (Coach.run's loop,
re-written here as those two calls so that each is timed and its result
kept; its best-epoch bookkeeping is left out). Loss: `trainEpoch`'s 'Loss'
(sum of the batches' BPR + reg + CL over n_train // batch).

MMSSL (main.py): argv `--data_path SCRATCH/ --dataset NAME --epoch N --seed
S --debug` (+ preset, which is empty: its README runs the parser defaults;
--debug only stops Logger from writing to the authors' log path) +
`--set`. Then `set_seed`, `Trainer(config)` as its `__main__` does, and per
epoch the official `Trainer.train()` itself with main.args.epoch = 1:
`train()` is one function holding the epoch loop, so each call runs exactly
one epoch of it (the trainer's state, the modality graphs included, stays
on the Trainer; the lr scheduler is never stepped there). Within a call the
official code tests on valid and, if valid Recall@20 > 0 (its best is reset
each call), on test; when it did not, the worker calls the same
`Trainer.test(test users)` itself. The test pass uses no random numbers, so
the training is the official run's. Left out: early stopping (patience 7;
we want the whole curves). Loss: the epoch total that `train()` logs
('train==[loss=mf + emb + reg ...]', summed over batches, 5 decimals),
read from its log line. When valid Recall@20 is 0, `train()` ends with an
UnboundLocalError on `test_ret` (its last log line), after the epoch; the
worker catches exactly that. NDCG: MMSSL's `ndcg_at_k` divides by the DCG
of the hits it found (ideal = the retrieved hits moved to the top), not of
min(|test items|, K) hits as DiffMM and MMRec do, so its NDCG is higher;
compare Recall.

`--batches N` (MMSSL): each epoch runs N of its batches, not all (its data
generator's `n_train`, which only sets train()'s batch count, is lowered;
`n_batch` in the result is the whole epoch's): a timed part of an epoch
for table3.py. `--resume-dir D`: the state after each epoch (`Resume`;
MMSSL's modality graphs on its Trainer included), so that a long run
survives being stopped and goes on exactly. `--args-only`: the official
parser's namespace for the command line, nothing loaded or run
(table3.py checks our settings against it, official_settings.py).

MMSSL's loader counts items as the largest item id in its json files + 1
(`loader_n_items` in the result): items after the last one that occurs are
never negatives nor ranked (TikTok: all 6710 occur).

Both codes test on the TEST split every epoch and select on it; compare
curves, not selections. Every row of the folder is converted, as DiffMM's
own files hold them: users with no training row are in the official test
passes (TikTok: 10 users, 5 test rows), while MMRec's loader, and so ours,
drops their valid/test rows.

CPU shims (torch_shims.py; this process only): `Tensor.cuda` a no-op when
CUDA is absent or --cpu (which also makes their `module.cuda()` a no-op);
`np.asfarray` (MMSSL metrics; numpy 2 removed it); `spmatrix.A` (DiffMM's
`trnMat.A`; scipy 1.14 removed it); empty modules for imports never called
here (dgl, visdom, torch.utils.tensorboard, setproctitle, and
sklearn.metrics, which MMSSL uses only with --test_flag full);
MMSSL's test pool is `multiprocessing.Pool(cpu_count() // 5)`, 0 on this
2-core machine, so `batch_test.cores` is set to max(that, 1) (or
--test-procs); the pool size does not change the metrics.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # see mmrec_worker.py
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from bench import common  # pylint: disable=g-import-not-at-top
from bench.reference import official_data  # pylint: disable=g-import-not-at-top
from bench.reference import torch_shims  # pylint: disable=g-import-not-at-top

# The README command lines (flags beyond --data / --epoch). MMSSL's README
# runs `main.py --dataset X` with the parser defaults for every dataset.
PRESETS = {
    'diffmm': {
        'tiktok': ['--reg', '1e-4', '--ssl_reg', '1e-2', '--trans', '1',
                   '--e_loss', '0.1', '--cl_method', '1'],
        'baby': ['--reg', '1e-5', '--ssl_reg', '1e-1', '--keepRate', '1',
                 '--e_loss', '0.01'],
        'sports': ['--reg', '1e-6', '--ssl_reg', '1e-2', '--temp', '0.1',
                   '--ris_lambda', '0.1', '--e_loss', '0.5', '--keepRate',
                   '1', '--trans', '1'],
        'defaults': [],
    },
    'mmssl': {'tiktok': [], 'baby': [], 'sports': [], 'defaults': []},
}
ENTRY = {'diffmm': 'Main.py', 'mmssl': 'main.py'}
HASHED = {'diffmm': ('Main.py', 'Model.py', 'DataHandler.py', 'Params.py',
                     'Utils/Utils.py'),
          'mmssl': ('main.py', 'Models.py', 'utility/load_data.py',
                    'utility/batch_test.py', 'utility/metrics.py',
                    'utility/parser.py')}
# DiffMM's folder whose --data value means two modalities (module doc).
DIFFMM_DATA_SLOT = 'baby'
MMSSL_DATA_NAME = 'data'  # the converted files' folder under the scratch
# What MMSSL's Trainer carries from one epoch to the next besides its
# modules and optimizers: the modality graphs in use and the top-k
# collection (main.py train(); its scheduler is never stepped).
MMSSL_CARRIED = tuple(f'{m}_{d}_{what}' for m in ('image', 'text')
                      for d in ('ui', 'iu')
                      for what in ('graph', 'graph_tmp')) + (
                          'image_ui_index', 'text_ui_index')
# Flags the worker sets itself.
RESERVED = {'data', 'epoch', 'seed', 'data_path', 'dataset', 'debug'}
# Imported at module level, never called here (stubbed only if missing).
UNUSED_IMPORTS = {
    'diffmm': {'setproctitle': ['setproctitle']},
    'mmssl': {'dgl': ['sampling', 'heterograph'], 'visdom': [],
              'torch.utils.tensorboard': ['SummaryWriter'],
              'sklearn.metrics': ['roc_auc_score']}}
_MMSSL_TRAIN_LOG = re.compile(r'train==\[([^\]]*)\]')


class UsageError(ValueError):
  """Bad arguments or input; the message says which and why."""


def official_argv(codebase: str, preset: str, sets: list[str]) -> list[str]:
  """The preset's flags then `--set KEY=VALUE` ones (argparse: last wins)."""
  out = list(PRESETS[codebase][preset])
  for item in sets:
    key, sep, value = item.partition('=')
    if not sep or not key:
      raise UsageError(f'--set {item!r}: expected KEY=VALUE')
    if key in RESERVED:
      raise UsageError(f'--set {key}: set by the worker (--epochs, --seed, '
                       'the data flags)')
    out += [f'--{key}', value]
  return out


def official_sys_argv(codebase: str, args: argparse.Namespace,
                      root: pathlib.Path, argv: list[str]) -> list[str]:
  """The official entry's command line: the worker's flags, then `argv`."""
  if codebase == 'diffmm':
    return ['Main.py', '--data', DIFFMM_DATA_SLOT, '--epoch',
            str(args.epochs), '--seed', str(args.seed)] + argv
  return ['main.py', '--data_path', f'{root}{os.sep}', '--dataset',
          MMSSL_DATA_NAME, '--epoch', str(args.epochs), '--seed',
          str(args.seed), '--debug'] + argv


def official_args(codebase: str, args: argparse.Namespace,
                  argv: list[str]) -> dict[str, Any]:
  """The official parser's settings for this command line, nothing run
  (DiffMM's Params.py and MMSSL's utility/parser.py parse sys.argv)."""
  sys.argv = official_sys_argv(codebase, args, pathlib.Path('.'), argv)
  if codebase == 'diffmm':
    import Params  # pylint: disable=g-import-not-at-top,import-error
    return vars(Params.args).copy()
  from utility import parser  # pylint: disable=g-import-not-at-top,import-error
  return vars(parser.parse_args()).copy()


def parse_mmssl_loss(messages: list[str]) -> dict[str, float]:
  """The first 'train==[loss=mf + emb + reg ...]' of train()'s log lines."""
  for msg in messages:
    m = _MMSSL_TRAIN_LOG.search(msg)
    if m:
      total, _, parts = m.group(1).partition('=')
      mf, emb, reg = (float(x) for x in parts.split('+')[:3])
      return {'loss': float(total), 'mf_loss': mf, 'emb_loss': emb,
              'reg_loss': reg}
  raise RuntimeError(f'no "train==[...]" line in MMSSL\'s log: {messages}')


def _digest(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def install_shims(codebase: str, on_gpu: bool) -> list[str]:
  shims = []
  if not on_gpu:
    # Also covers their `module.cuda()` calls (Module.cuda applies
    # Tensor.cuda to each parameter and buffer).
    torch_shims.make_cuda_a_noop()
    shims.append('Tensor.cuda no-op')
  if torch_shims.restore_numpy_asfarray():
    shims.append('np.asfarray')
  if torch_shims.restore_sparse_dense_attr():
    shims.append('spmatrix.A')
  shims += [f'stub {m}' for m in
            torch_shims.stub_missing_modules(UNUSED_IMPORTS[codebase])]
  return shims


class Resume:
  """`--resume-dir`: after each epoch, the trainer's state (every torch
  module and optimizer it holds, the attributes named in `carried`, the
  Python, numpy and torch random states) and the epochs' records, written
  atomically; a run started on the same folder goes on from the next epoch
  as the uninterrupted run would have (the same random streams). A folder
  of another command line is refused."""

  def __init__(self, folder: str | None, signature: dict[str, Any]):
    self.folder = pathlib.Path(folder) if folder else None
    self.signature = signature
    self.carried: tuple[str, ...] = ()  # set by the codebase's runner

  def _paths(self) -> tuple[pathlib.Path, pathlib.Path]:
    return self.folder / 'state.pt', self.folder / 'epochs.json'

  def load(self, holder: Any, on_gpu: bool) -> list[dict[str, Any]]:
    """The finished epochs' records ([] for a fresh run); restores the
    state into `holder`'s modules and optimizers."""
    if self.folder is None or not self._paths()[1].is_file():
      return []
    import random  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    state_path, records_path = self._paths()
    saved = json.loads(records_path.read_text())
    if saved['signature'] != self.signature:
      raise UsageError(f'--resume-dir {self.folder}: written by another '
                       f"command line ({saved['signature']}), not "
                       f'{self.signature}')
    state = torch.load(state_path, weights_only=False)
    for name, value in _stateful(holder).items():
      value.load_state_dict(state['objects'][name])
    for name in self.carried:
      setattr(holder, name, state['carried'][name])
    random.setstate(state['random'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if on_gpu:
      torch.cuda.set_rng_state_all(state['cuda'])
    return saved['epochs']

  def save(self, holder: Any, on_gpu: bool,
           epochs: list[dict[str, Any]]) -> None:
    if self.folder is None:
      return
    import random  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    self.folder.mkdir(parents=True, exist_ok=True)
    state_path, records_path = self._paths()
    state = {'objects': {k: v.state_dict()
                         for k, v in _stateful(holder).items()},
             'carried': {k: getattr(holder, k) for k in self.carried},
             'random': random.getstate(), 'numpy': np.random.get_state(),
             'torch': torch.get_rng_state(),
             'cuda': torch.cuda.get_rng_state_all() if on_gpu else None}
    tmp = state_path.with_name(state_path.name + '.tmp')
    torch.save(state, tmp)
    os.replace(tmp, state_path)  # the state first: records never run ahead
    tmp = records_path.with_name(records_path.name + '.tmp')
    tmp.write_text(json.dumps({'signature': self.signature,
                               'epochs': epochs}))
    os.replace(tmp, records_path)


def _stateful(holder: Any) -> dict[str, Any]:
  """The torch modules and optimizers among `holder`'s attributes."""
  import torch  # pylint: disable=g-import-not-at-top
  kinds = (torch.nn.Module, torch.optim.Optimizer)
  return {k: v for k, v in sorted(vars(holder).items())
          if isinstance(v, kinds)}


def run_diffmm(args, src: pathlib.Path, root: pathlib.Path, split, argv,
               sync) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  official_data.write_diffmm(split, root / 'Datasets' / DIFFMM_DATA_SLOT)
  sys.argv = official_sys_argv('diffmm', args, root, argv)
  import Main  # pylint: disable=g-import-not-at-top,import-error
  oargs = Main.args
  Main.seed_it(oargs.seed)  # what its __main__ does, in its order
  Main.logger.saveDefault = True
  handler = Main.DataHandler()
  handler.LoadData()
  coach = Main.Coach(handler)
  coach.prepareModel()
  info = {'topk': oargs.topk, 'official_args': vars(oargs).copy(),
          'n_train': len(handler.trnLoader.dataset),
          'n_test_users': len(handler.tstLoader.dataset)}
  per_epoch = args.resume.load(coach, args.on_gpu)
  for ep in range(len(per_epoch), args.epochs):
    t0 = time.perf_counter()
    reses = coach.trainEpoch()
    sync()
    t1 = time.perf_counter()
    test = coach.testEpoch()
    sync()
    t2 = time.perf_counter()
    k = oargs.topk
    per_epoch.append({
        'epoch': ep, 'train_s': t1 - t0, 'test_s': t2 - t1,
        'loss': float(reses['Loss']),
        'losses': {key: float(v) for key, v in reses.items()},
        'test': {f'recall@{k}': float(test['Recall']),
                 f'ndcg@{k}': float(test['NDCG']),
                 f'precision@{k}': float(test['Precision'])}})
    _print_epoch(per_epoch[-1], k)
    args.resume.save(coach, args.on_gpu, per_epoch)
  return info, per_epoch


def _metrics_at(ret: dict[str, Any], ks: list[int]) -> dict[str, float]:
  out = {}
  for n, k in enumerate(ks):
    out[f'recall@{k}'] = float(ret['recall'][n])
    out[f'ndcg@{k}'] = float(ret['ndcg'][n])
    out[f'precision@{k}'] = float(ret['precision'][n])
    out[f'hit@{k}'] = float(ret['hit_ratio'][n])
  return out


def run_mmssl(args, src: pathlib.Path, root: pathlib.Path, split, argv,
              sync) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  official_data.write_mmssl(split, root / MMSSL_DATA_NAME)
  sys.argv = official_sys_argv('mmssl', args, root, argv)
  # Imports data_generator (utility/batch_test.py reads the json files).
  import main as mmssl_main  # pylint: disable=g-import-not-at-top,import-error
  from utility import batch_test  # pylint: disable=g-import-not-at-top,import-error
  batch_test.cores = args.test_procs or max(batch_test.cores, 1)
  oargs = mmssl_main.args
  ks = list(eval(oargs.Ks))  # pylint: disable=eval-used  (as main.py does)
  data = batch_test.data_generator
  mmssl_main.set_seed(oargs.seed)
  trainer = mmssl_main.Trainer(data_config={'n_users': data.n_users,
                                            'n_items': data.n_items})
  messages: list[str] = []
  official_logging = trainer.logger.logging

  def logging(s):
    messages.append(str(s))
    official_logging(s)
  trainer.logger.logging = logging

  calls: dict[bool, tuple[Any, float]] = {}  # is_val -> (result, seconds)
  official_test = trainer.test

  def test(users, is_val):
    t0 = time.perf_counter()
    ret = official_test(users, is_val)
    sync()
    calls[bool(is_val)] = (ret, time.perf_counter() - t0)
    return ret
  trainer.test = test

  info = {'Ks': ks, 'official_args': vars(oargs).copy(),
          'n_train': int(data.n_train), 'n_test_users': len(data.test_set),
          'n_valid_users': len(data.val_set),
          'loader_n_users': int(data.n_users),
          'loader_n_items': int(data.n_items)}
  # train() runs n_train // batch_size + 1 batches an epoch; n_train is
  # read nowhere else in training, so --batches N times N of them.
  n_batch = data.n_train // oargs.batch_size + 1
  info['n_batch'] = n_batch
  if args.batches:
    data.n_train = (args.batches - 1) * oargs.batch_size
    info['batches_timed'] = args.batches
  args.resume.carried = MMSSL_CARRIED
  per_epoch = args.resume.load(trainer, args.on_gpu)
  mmssl_main.args.epoch = 1  # one epoch of train()'s loop per call
  for ep in range(len(per_epoch), args.epochs):
    messages.clear()
    calls.clear()
    t0 = time.perf_counter()
    try:
      trainer.train()
    except UnboundLocalError as e:  # valid Recall@20 was 0 (module doc)
      if 'test_ret' not in str(e):
        raise
    sync()
    inside = time.perf_counter() - t0  # the epoch and the official tests
    official_tested = False in calls
    if not official_tested:
      test(list(data.test_set.keys()), False)
    losses = parse_mmssl_loss(messages)
    k = 20 if 20 in ks else ks[0]
    per_epoch.append({
        'epoch': ep,
        'train_s': inside - calls[True][1] - (
            calls[False][1] if official_tested else 0.0),
        'valid_s': calls[True][1], 'test_s': calls[False][1],
        'loss': losses['loss'], 'losses': losses,
        'valid': _metrics_at(calls[True][0], ks),
        'test': _metrics_at(calls[False][0], ks),
        'test_called_by': 'official train()' if official_tested else
                          'worker'})
    _print_epoch(per_epoch[-1], k)
    args.resume.save(trainer, args.on_gpu, per_epoch)
  return info, per_epoch


def _print_epoch(e: dict[str, Any], k: int) -> None:
  t = e['test']
  print(f'# epoch {e["epoch"]}: train {e["train_s"]:.2f} s loss '
        f'{e["loss"]:.5f} | test recall@{k} {t[f"recall@{k}"]:.4f} '
        f'ndcg@{k} {t[f"ndcg@{k}"]:.4f} ({e["test_s"]:.2f} s)', flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
  src = pathlib.Path(args.src).resolve()
  if not (src / ENTRY[args.codebase]).is_file():
    raise UsageError(f'{src / ENTRY[args.codebase]} not found: --src must be '
                     f'the official {args.codebase} code (DiffMM: the '
                     'repository root; MMSSL: its MMSSL/ folder)')
  if args.epochs < 1:
    raise UsageError('--epochs must be >= 1')
  argv = official_argv(args.codebase, args.preset, args.set)
  if args.batches and args.codebase != 'mmssl':
    raise UsageError('--batches: MMSSL only (a DiffMM epoch is timed whole)')
  if args.batches < 0:
    raise UsageError('--batches must be >= 0')
  if args.args_only:
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(src))
    return {'impl': 'official', 'codebase': args.codebase,
            'official_args': official_args(args.codebase, args, argv)}
  try:
    split = official_data.read_folder(args.folder, args.name, args.v_feat,
                                      args.t_feat)
  except official_data.DataError as e:
    raise UsageError(str(e)) from None

  import torch  # pylint: disable=g-import-not-at-top
  on_gpu = torch.cuda.is_available() and not args.cpu
  shims = install_shims(args.codebase, on_gpu)
  if args.threads:
    torch.set_num_threads(args.threads)
  args.on_gpu = on_gpu
  args.resume = Resume(args.resume_dir, {
      'codebase': args.codebase, 'argv': argv, 'seed': args.seed,
      'folder': str(pathlib.Path(args.folder).resolve()), 'name': args.name,
      'features': [args.v_feat, args.t_feat], 'device': str(on_gpu),
      'files_sha256_16': {f: _digest(src / f)
                          for f in HASHED[args.codebase]},
      **({'batches': args.batches} if args.batches else {})})
  sync = torch.cuda.synchronize if on_gpu else (lambda: None)
  result: dict[str, Any] = {
      'impl': 'official', 'codebase': args.codebase, 'src': str(src),
      'files_sha256_16': {f: _digest(src / f) for f in HASHED[args.codebase]},
      'preset': args.preset, 'argv_extra': argv, 'seed': args.seed,
      'folder': str(pathlib.Path(args.folder).resolve()),
      'features': [args.v_feat, args.t_feat],
      'n_users': split.n_users, 'n_items': split.n_items,
      'n_rows': {s: int((split.labels == k).sum())
                 for k, s in enumerate(official_data.SPLITS)},
      'device': 'cuda' if on_gpu else 'cpu',
      'torch': torch.__version__, 'torch_threads': torch.get_num_threads(),
      'shims': shims}

  root = pathlib.Path(tempfile.mkdtemp(prefix=f'official_{args.codebase}_',
                                       dir=args.scratch))
  cwd = os.getcwd()
  sys.dont_write_bytecode = True  # nothing written into the checkout
  try:
    os.chdir(root)
    sys.path.insert(0, str(src))
    runner = run_diffmm if args.codebase == 'diffmm' else run_mmssl
    info, per_epoch = runner(args, src, root, split, argv, sync)
  finally:
    os.chdir(cwd)
    shutil.rmtree(root, ignore_errors=True)
  result.update(info)
  result['metrics_per_epoch'] = per_epoch
  result['epoch_losses'] = [e['loss'] for e in per_epoch]
  result['ru_maxrss_gib'] = torch_shims.ru_maxrss_gib()
  return result


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--codebase', required=True, choices=sorted(ENTRY))
  p.add_argument('--src', required=True,
                 help='official checkout: DiffMM root, or MMSSL/MMSSL')
  p.add_argument('--folder', required=True,
                 help='MMRec folder: <name>.inter and the feature files')
  p.add_argument('--name', help='stem of <name>.inter (default: folder name)')
  p.add_argument('--v-feat', default='image_feat.npy')
  p.add_argument('--t-feat', default='text_feat.npy',
                 help='second modality (TikTok here: audio_feat.npy)')
  p.add_argument('--preset', required=True,
                 choices=sorted(PRESETS['diffmm']),
                 help="the README's flags for that dataset (MMSSL: none)")
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='official flag --KEY VALUE after the preset')
  p.add_argument('--epochs', type=int, default=1)
  p.add_argument('--seed', type=int, required=True)
  p.add_argument('--threads', type=int, default=0)
  p.add_argument('--test-procs', type=int, default=0,
                 help="MMSSL's test pool size (default: its own, min 1)")
  p.add_argument('--cpu', action='store_true', help='ignore CUDA')
  p.add_argument('--batches', type=int, default=0,
                 help='MMSSL: train N batches an epoch (a timed part of '
                 'one; its n_batch is in the result), not all')
  p.add_argument('--resume-dir',
                 help='keep the state here after each epoch and go on '
                 'from it (a longer --epochs extends a finished run)')
  p.add_argument('--args-only', action='store_true',
                 help="print the official parser's settings; run nothing")
  p.add_argument('--scratch', help='parent of the scratch folder')
  return p


def main() -> None:
  args = build_parser().parse_args()
  try:
    result = run(args)
  except UsageError as e:
    print(f'official_worker: {e}', file=sys.stderr)
    sys.exit(2)
  result['env'] = common.environment()
  common.emit_result(result)


if __name__ == '__main__':
  main()
