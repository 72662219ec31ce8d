"""Times the OFFICIAL MENTOR code and ours on the same synthetic dataset.

The official code is never copied into this repository: pass the path of a
clone of Jinfeng-Xu/MENTOR with `--mentor-src`, and a Python that has torch
(and torch_geometric) with `--ref-python`. The official code runs unmodified
(see ref_worker.py for the two in-process shims that let it run on a CPU).

  # once: a separate torch venv, outside the repository
  python3 -m venv /work/refvenv
  /work/refvenv/bin/pip install torch==2.13.0 numpy scipy pandas pyyaml \
      torch_geometric
  # once: a Baby-shaped MMRec folder and our .npz of the same files
  python -m data_prep synth --preset baby --out /work/bench_data/baby \
      --name baby --npz /work/bench_data/synth_baby.npz
  # side by side (ours first, then the official code), one after the other
  python bench/reference/run_reference.py --mentor-src /work/ref/MENTOR \
      --ref-python /work/refvenv/bin/python --folder /work/bench_data/baby \
      --npz /work/bench_data/synth_baby.npz --with-ours

The official data layout is `<data-root>/<name>/{<name>.inter,
image_feat.npy, text_feat.npy, user_graph_dict.npy}`; the first three are
symlinked from `--folder`, and `user_graph_dict.npy` is generated as the
official preprocessing script does (user -> [co-interacting users sorted by
the number of shared training items, top 200; those counts]). The official
constructor loads that file but nothing it feeds reaches the loss.

Timed: the official per-epoch host work (`pre_epoch_processing`) once, then
`--batches` training batches after `--warmup` (each batch as in
`Trainer._train_epoch`, negative sampling included), then `--epochs` whole
epochs (the official `Trainer._train_epoch` itself), and full evaluation
(valid + test via `Trainer.evaluate`). From batches the official epoch is
EXTRAPOLATED: pre_epoch + median batch x batches per epoch (a full Baby epoch
is ~58 batches of ~12 s on a 2-core CPU); on a GPU time whole epochs
(`--batches 0 --epochs 2`), as bench/device_suite.sh does.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
from typing import Any

# Only the banner imports jax here; on a machine whose Python has jax next to
# torch (the device machine), a jax GPU client in this parent process would
# hold most of the GPU's memory while the official code runs in the child.
# Our own side (--with-ours) gets the caller's setting back.
CALLER_JAX_PLATFORMS = os.environ.get('JAX_PLATFORMS')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from bench import common  # pylint: disable=g-import-not-at-top

HERE = pathlib.Path(__file__).resolve().parent


def user_graph_dict(inter_path: pathlib.Path, top: int = 200
                    ) -> dict[int, list[list[Any]]]:
  """The official `user_graph_dict.npy` content, computed sparsely.

  Users are linked by the number of training items they share (the
  preprocessing script's O(U^2) Python loop, done as A @ A^T); each user
  keeps its `top` strongest neighbours, strongest first.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  import pandas as pd  # pylint: disable=g-import-not-at-top
  import scipy.sparse as sp  # pylint: disable=g-import-not-at-top

  df = pd.read_csv(inter_path, sep='\t', usecols=['userID', 'itemID',
                                                  'x_label'])
  n_users = int(df['userID'].max()) + 1
  n_items = int(df['itemID'].max()) + 1
  train = df[df['x_label'] == 0]
  a = sp.csr_matrix((np.ones(len(train), np.float32),
                     (train['userID'].to_numpy(), train['itemID'].to_numpy())),
                    shape=(n_users, n_items))
  a.data[:] = 1.0  # the script counts distinct shared items (set overlap)
  co = (a @ a.T).tocsr()
  co.setdiag(0)
  co.eliminate_zeros()
  out = {}
  for u in range(n_users):
    lo, hi = co.indptr[u], co.indptr[u + 1]
    cols, vals = co.indices[lo:hi], co.data[lo:hi]
    order = np.lexsort((cols, -vals))[:top]
    out[u] = [cols[order].tolist(), vals[order].astype(float).tolist()]
  return out


def prepare(folder: pathlib.Path, root: pathlib.Path,
            name: str) -> pathlib.Path:
  """Lays out `<root>/<name>/` in the official format; returns that folder."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  inter = folder / f'{name}.inter'
  if not inter.is_file():
    raise FileNotFoundError(f'{inter} not found (the official config of '
                            f'dataset {name!r} reads {name}.inter)')
  dst = root / name
  dst.mkdir(parents=True, exist_ok=True)
  for f in (f'{name}.inter', 'image_feat.npy', 'text_feat.npy'):
    link = dst / f
    if link.is_symlink() or link.exists():
      link.unlink()
    link.symlink_to((folder / f).resolve())
  graph = dst / 'user_graph_dict.npy'
  if not graph.exists():
    np.save(graph, user_graph_dict(inter), allow_pickle=True)
  return dst


def run_official(args: argparse.Namespace) -> dict[str, Any]:
  argv = [args.ref_python, str(HERE / 'ref_worker.py'),
          '--mentor-src', args.mentor_src, '--data-path', str(args.data_root),
          '--dataset', args.name, '--batches', str(args.batches),
          '--warmup', str(args.warmup), '--epochs', str(args.epochs),
          '--eval-reps', str(args.eval_reps)]
  if args.timeout:
    # The worker leaves out whole epochs that would not fit, rather than
    # being killed with nothing measured.
    argv += ['--time-limit', str(args.timeout)]
  env = dict(os.environ)
  # Imports of `bench` need the repository, not the caller's cwd.
  env['PYTHONPATH'] = os.pathsep.join(
      p for p in (str(common.REPO), env.get('PYTHONPATH')) if p)
  r = common.run_worker(argv, cwd=common.REPO, env=env,
                        timeout_s=args.timeout, echo=args.echo)
  r['argv'] = argv
  return r


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
  sys.path.insert(0, str(common.REPO / 'bench'))
  import bench_train  # pylint: disable=g-import-not-at-top
  spec = {'config': args.our_config, 'overrides': {}, 'variant': 'full',
          'data_npz': str(args.npz), 'steps': args.our_steps,
          'warmup': args.our_warmup, 'epochs_timed': args.our_epochs,
          'eval_reps': args.our_eval_reps, 'skip_eval': False}
  env = dict(os.environ)
  env.pop('JAX_PLATFORMS')
  if CALLER_JAX_PLATFORMS is not None:
    env['JAX_PLATFORMS'] = CALLER_JAX_PLATFORMS
  r = common.run_worker(common.self_worker_argv(bench_train.__file__, spec),
                        cwd=common.REPO, env=env, timeout_s=args.timeout,
                        echo=args.echo)
  r['spec'] = spec
  return r


def official_epoch_s(r: dict[str, Any]) -> float:
  """Median whole-epoch time where epochs were timed, else the extrapolation."""
  return (r['epoch_s']['median'] if 'epoch_s' in r
          else r['epoch_s_extrapolated'])


def describe_official(r: dict[str, Any]) -> str:
  if 'error' in r:
    return f"official: FAILED (rc={r.get('returncode')}):\n{r['error']}"
  lines = [
      f"official MENTOR ({r.get('cuda_device') or r['device']}, torch "
      f"{r['env'].get('torch')}, {r['torch_threads']} threads): "
      f"U={r['n_users']} I={r['n_items']} n_train={r['n_train']} "
      f"batches/epoch={r['batches_per_epoch']}",
      f"  setup {r['setup_s']:.1f} s, pre_epoch_processing "
      f"{r['pre_epoch_s']:.2f} s"]
  if 'batch_s' in r:
    lines += [
        f"  batch  {common.fmt_stats(r['batch_s'])} "
        f"(after {r['warmup_batches']} warm-up)",
        f"  epoch  {r['epoch_s_extrapolated']:.1f} s EXTRAPOLATED "
        f"(pre_epoch + median batch x {r['batches_per_epoch']})"]
  if 'epoch_s' in r:
    lines.append(f"  epoch  {common.fmt_stats(r['epoch_s'])} (whole epochs)")
  lines.append(f"  eval (valid+test) {common.fmt_stats(r['eval_s'])}, first "
               f"{r['eval_first_s']:.2f} s")
  if 'torch_cuda_peak_allocated_gib' in r:
    lines.append(f"  peak GPU memory {r['torch_cuda_peak_allocated_gib']:.2f}"
                 f" GiB allocated, {r['torch_cuda_peak_reserved_gib']:.2f}"
                 f" GiB reserved")
  lines.append(
      f"  peak RSS {r['peak_rss_gib']:.2f} GiB (VmHWM "
      f"{r.get('vm_hwm_gib') or float('nan'):.2f}); load "
      f"{r['loadavg_before'][0]:.2f} -> {r['loadavg_after'][0]:.2f}")
  return '\n'.join(lines)


def ratios(ref: dict[str, Any], ours: dict[str, Any]) -> dict[str, float]:
  """reference / ours for time and memory (> 1: ours is faster/smaller)."""
  ours_epoch = (ours['epoch_s']['median'] if 'epoch_s' in ours
                else ours['epoch_s_extrapolated'])
  out = {
      'epoch_speedup': official_epoch_s(ref) / ours_epoch,
      'eval_speedup': ref['eval_s']['median'] / ours['eval_s']['median'],
      'peak_rss_ratio': ref['peak_rss_gib'] / ours['peak_rss_gib'],
      'ours_epoch_s': ours_epoch,
      'ref_epoch_s': official_epoch_s(ref),
      'ref_epoch_whole': 'epoch_s' in ref,
  }
  if 'batch_s' in ref:
    out['step_speedup'] = ref['batch_s']['median'] / ours['step_s']['median']
  if ref.get('torch_cuda_peak_allocated_gib') and ours.get('device_peak_gib'):
    out['device_peak_ratio'] = (ref['torch_cuda_peak_allocated_gib']
                                / ours['device_peak_gib'])
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--mentor-src', required=True,
                 help='clone of Jinfeng-Xu/MENTOR (outside this repo)')
  p.add_argument('--ref-python', default=os.environ.get(
      'REF_PYTHON', '/work/refvenv/bin/python'),
                 help='a Python with torch and torch_geometric')
  p.add_argument('--folder', required=True, type=pathlib.Path,
                 help='MMRec-format folder (from `data_prep synth`)')
  p.add_argument('--name', default='baby',
                 help='dataset name; the checkout must have '
                 'src/configs/dataset/<name>.yaml (baby, sports, clothing)')
  p.add_argument('--data-root', type=pathlib.Path,
                 default=pathlib.Path('/tmp/mentor_ref_data'))
  p.add_argument('--batches', type=int, default=5,
                 help='timed single batches (the epoch is extrapolated)')
  p.add_argument('--warmup', type=int, default=1,
                 help='untimed batches first')
  p.add_argument('--epochs', type=int, default=0,
                 help='whole epochs timed after the batches')
  p.add_argument('--eval-reps', type=int, default=2)
  p.add_argument('--with-ours', action='store_true',
                 help='also run bench_train (full variant) first, on --npz')
  p.add_argument('--npz', type=pathlib.Path,
                 help='our .npz of the same folder (data_prep synth --npz)')
  p.add_argument('--our-config', default='configs/synth_baby.py')
  p.add_argument('--our-epochs', type=int, default=2)
  p.add_argument('--our-warmup', type=int, default=1)
  p.add_argument('--our-steps', type=int)
  p.add_argument('--our-eval-reps', type=int, default=5)
  p.add_argument('--rounds', type=int, default=1,
                 help='repeat (ours, official) this many times')
  p.add_argument('--timeout', type=float, default=3600)
  p.add_argument('--out', type=pathlib.Path)
  p.add_argument('--echo', action='store_true')
  args = p.parse_args()
  if args.with_ours and not args.npz:
    p.error('--with-ours needs --npz (our .npz of the same --folder)')

  env = common.print_environment()
  # The torch side's versions, as the worker will see them.
  ref_ver = subprocess.run(
      [args.ref_python, '-c', 'import torch, torch_geometric; '
       'print(torch.__version__, torch_geometric.__version__)'],
      capture_output=True, text=True, check=False).stdout.strip()
  print(f'# reference python {args.ref_python}: torch, torch_geometric = '
        f'{ref_ver}; checkout {args.mentor_src}', flush=True)
  prepare(args.folder, args.data_root, args.name)

  runs = []
  for _ in range(args.rounds):
    entry: dict[str, Any] = {}
    if args.with_ours:
      entry['ours'] = run_ours(args)
      sys.path.insert(0, str(common.REPO / 'bench'))
      import bench_train  # pylint: disable=g-import-not-at-top
      print(bench_train.describe(entry['ours']), flush=True)
    entry['official'] = run_official(args)
    print(describe_official(entry['official']), flush=True)
    if args.with_ours and not any('error' in entry[k] for k in entry):
      entry['ratios'] = ratios(entry['official'], entry['ours'])
      r = entry['ratios']
      print(f"RATIOS (official / ours, same session): epoch "
            f"{r['epoch_speedup']:.2f}x, eval {r['eval_speedup']:.2f}x, "
            f"peak RSS {r['peak_rss_ratio']:.2f}x", flush=True)
    runs.append(entry)
  out = args.out or common.default_out_dir() / f'reference_{args.name}.json'
  common.write_json(out, {'env': env, 'reference_versions': ref_ver,
                          'argv': sys.argv, 'runs': runs})
  print(f'# wrote {out}')


if __name__ == '__main__':
  main()
