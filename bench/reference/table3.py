"""Table 3 of the MENTOR paper: seconds per epoch and memory, ours vs MMRec.

For each model, our family (mentor_jax/configs/baseline.py) and MMRec's own
implementation (a checkout of enoche/MMRec, run by mmrec_worker.py with the
torch interpreter) train on the same synthetic files, one after the other in
one sitting, each in a fresh process whose peak RSS is its own (wait4, see
bench/common.py). The settings are one cell per model; before anything is
timed they are checked to be the same on both sides (mmrec_settings.py).

  # once: the MMRec checkout (outside this repository) and the data
  mkdir -p /work/ref/MMRec && git --git-dir=/work/.mirror/enoche+MMRec/repo \
      archive HEAD | tar -x -C /work/ref/MMRec
  python -m data_prep synth --preset clothing --out /work/bench_data/clothing \
      --name clothing --npz /work/bench_data/synth_clothing.npz
  # the sitting
  python bench/reference/table3.py --mmrec-src /work/ref/MMRec \
      --folder /work/bench_data/clothing --npz \
      /work/bench_data/synth_clothing.npz --dataset clothing

Ours: the compiled epoch (`epoch.py`'s programs, AOT-compiled, compile
time apart), `--our-warmup` untimed epochs, then `--our-epochs` timed ones;
evaluation = the scoring forward pass (where our config recomputes it, as
MMRec's `full_sort_predict` does) + full ranking of valid and test.
MMRec: see mmrec_worker.py; `--mmrec-batches` timed batches first (an
extrapolated epoch), then `--mmrec-epochs` whole epochs unless they would
not fit in `--mmrec-time-limit`; the table shows whole epochs where there
are any, else the extrapolation, marked `~`.

DiffMM and MMSSL are not in MMRec: their reference is the official code
(HKUDS/DiffMM, HKUDS/MMSSL, run by official_worker.py, `--official-src
diffmm=/work/ref/DiffMM --official-src mmssl=/work/ref/MMSSL/MMSSL`), its
settings the README's command for `--dataset` (official_worker.PRESETS),
checked against ours through the official parsers (official_settings.py)
before anything is timed; `--official-epochs` whole epochs, each timed. A
model in `--step-timed` (default MMSSL, whose official CPU epoch takes 20-30
minutes here) runs the first `--timed-steps` steps of each epoch on both
sides, and its epoch is extrapolated as seconds per step x steps an epoch.

Outputs `<out>.json` (everything, rewritten after each model so a long
sitting keeps what it measured) and `<out>.md` (the table). Existing files
are not overwritten: pass another --out.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any, Sequence

# As run_reference.py: no jax GPU client in this parent (the MMRec child
# may need the GPU); our own child gets the caller's setting back.
CALLER_JAX_PLATFORMS = os.environ.get('JAX_PLATFORMS')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from bench import common  # pylint: disable=g-import-not-at-top
from bench.reference import mmrec_settings  # pylint: disable=g-import-not-at-top
from bench.reference import official_settings  # pylint: disable=g-import-not-at-top
from bench.reference import official_worker  # pylint: disable=g-import-not-at-top

HERE = pathlib.Path(__file__).resolve().parent
# The table's order (ID-only models first).
DEFAULT_MODELS = ('mfbpr', 'lightgcn', 'layergcn', 'vbpr', 'mmgcn',
                  'lattice', 'bm3', 'freedom', 'lgmrec', 'dualgnn', 'slmrec')
# Models that are not in MMRec: their reference is the official code
# (official_worker.py; `--official-src CODEBASE=PATH`).
OFFICIAL_MODELS = ('diffmm', 'mmssl')


def display_name(model: str) -> str:
  """As papers print it: the family's display name."""
  from mentor_jax import registry  # pylint: disable=g-import-not-at-top
  return registry.get(model).title
OUR_LIMIT_GIB = 4.0  # issue 16: our side within 4 GiB on Clothing


# ---------------------------------------------------------------- settings


def our_config(model: str, dataset: str, npz: str | None = None,
               overrides: dict[str, Any] | None = None):
  """Our baseline config for `model` on `dataset`, reading `npz`."""
  from mentor_jax.configs import baseline  # pylint: disable=g-import-not-at-top
  config = baseline.get_config(f'{model},{dataset}')
  if npz:
    config.data_npz = str(npz)
  for key, value in (overrides or {}).items():
    config[key] = value
  return config


def settings_problems(model: str, config) -> list[str]:
  """Why our `config` and the MMRec cell of `model` differ ([] if same)."""
  problems = mmrec_settings.differences(
      model, mmrec_settings.from_ours(model, config))
  want = mmrec_settings.EVAL_EMBEDDINGS[model]
  if config.eval_embeddings != want:
    problems.append(f'eval_embeddings: ours {config.eval_embeddings!r}, '
                    f'MMRec scores as {want!r}')
  for key, value in mmrec_settings.OURS_ONLY.get(model, {}).items():
    if value is not None and config.get(key) != value:
      problems.append(f'{key}: ours {config.get(key)!r}, MMRec behaves as '
                      f'{value!r}')
  return problems


# -------------------------------------------------------------- our worker


def run_ours_workload(spec: dict[str, Any]) -> dict[str, Any]:
  """Worker body (a fresh process): times our family's epoch and eval."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from mentor_jax import datasets
  from mentor_jax import epoch as epoch_lib
  from mentor_jax import metrics as metrics_lib
  from mentor_jax import train

  config = our_config(spec['model'], spec['dataset'], spec['npz'],
                      spec.get('overrides'))
  train.check_config(config)
  jax.devices()  # start the runtime before measuring its footprint
  base_rss = common.vm_rss_gib()
  t0 = time.perf_counter()
  dataset = datasets.load_for_config(config)
  family, hp, data, graphdef, rest, state = epoch_lib.setup(config, dataset)
  evaluator = metrics_lib.Evaluator.for_config(dataset, config)
  setup_s = time.perf_counter() - t0
  hwm = {'setup': common.vm_hwm_gib()}

  kwargs = dict(graphdef=graphdef, family=family, hp=hp)
  compiled = epoch_lib.compile_epoch(state, rest, data, **kwargs)
  compile_s = compiled.compile_s
  n_steps = epoch_lib.n_steps_of(family, data, hp)
  # A step-timed model runs its epochs' first `steps` steps only (the
  # epoch is then steps x its seconds per step, marked extrapolated).
  run_steps = min(spec.get('steps') or n_steps, n_steps)
  epoch_lib.release_freed_host_memory()  # as the trainer does
  hwm['compile'] = common.vm_hwm_gib()

  def one_epoch():
    nonlocal state
    state, parts, scores = compiled(state, rest, data, n_steps=run_steps)
    return state, parts, scores

  first_s, (state, parts, scores) = common.time_call(one_epoch)
  for _ in range(spec['warmup']):
    state, parts, scores = common.block(one_epoch())
  epoch_times = []
  for _ in range(spec['epochs']):
    dt, (state, parts, scores) = common.time_call(one_epoch)
    epoch_times.append(dt)
  hwm['train'] = common.vm_hwm_gib()
  parts = jax.device_get(parts)
  finite = all(bool(np.all(np.isfinite(v[:run_steps])))
               for v in parts.values())
  timing = {'epoch_s': common.summarize(epoch_times),
            'epoch_times_s': epoch_times}
  if run_steps < n_steps:
    timing = {'epoch_s': {'n': 0}, 'steps_timed': run_steps,
              'part_epoch_s': common.summarize(epoch_times),
              'epoch_s_extrapolated': (common.summarize(epoch_times)['median']
                                       / run_steps * n_steps)}

  recompute = config.eval_embeddings == 'recompute'

  def evaluate():
    emb = (epoch_lib.clean_scores(state.params, rest, data, **kwargs)
           if recompute else scores)
    return evaluator(*emb)

  t0 = time.perf_counter()
  metrics = evaluate()  # compiles the scoring and ranking programs
  eval_first_s = time.perf_counter() - t0
  eval_times = []
  for _ in range(spec['eval_reps']):
    t0 = time.perf_counter()
    evaluate()
    eval_times.append(time.perf_counter() - t0)
  hwm['eval'] = common.vm_hwm_gib()
  return {
      'impl': 'ours', 'model': spec['model'], 'dataset': spec['dataset'],
      'data_npz': str(config.data_npz), 'n_users': dataset.n_users,
      'n_items': dataset.n_items, 'n_train': dataset.n_train,
      'batch_size': hp.batch_size,
      'spmm_kernel': getattr(hp, 'spmm_kernel', None),
      'eval_embeddings': config.eval_embeddings,
      'runtime_rss_gib': base_rss, 'hwm_after_gib': hwm,
      'setup_s': setup_s, 'compile_s': compile_s,
      'first_epoch_s': first_s, 'warmup_epochs': spec['warmup'],
      'n_steps': n_steps, **timing,
      'eval_first_s': eval_first_s, 'eval_s': common.summarize(eval_times),
      'losses_finite': finite,
      'valid_recall@20': float(metrics['valid']['recall@20']),
  }


def worker_main(raw: str) -> None:
  result = run_ours_workload(json.loads(raw))
  result['env'] = common.environment()
  common.emit_result(result)


# ------------------------------------------------------------------ driver


def run_ours(args: argparse.Namespace, model: str) -> dict[str, Any]:
  spec = {'model': model, 'dataset': args.dataset, 'npz': str(args.npz),
          'warmup': args.our_warmup, 'epochs': args.our_epochs,
          'eval_reps': args.our_eval_reps,
          'steps': args.timed_steps if model in args.step_timed else 0}
  env = dict(os.environ)
  env.pop('JAX_PLATFORMS', None)
  if CALLER_JAX_PLATFORMS is not None:
    env['JAX_PLATFORMS'] = CALLER_JAX_PLATFORMS
  r = common.run_worker(common.self_worker_argv(__file__, spec),
                        cwd=common.REPO, env=env, timeout_s=args.timeout,
                        echo=args.echo)
  r['spec'] = spec
  return r


def mmrec_argv(args: argparse.Namespace, model: str) -> list[str]:
  argv = [args.ref_python, str(HERE / 'mmrec_worker.py'),
          '--mmrec-src', str(args.mmrec_src), '--model', model,
          '--folder', str(args.folder), '--name', args.name,
          '--batches', str(args.mmrec_batches),
          '--warmup', str(args.mmrec_warmup),
          '--epochs', str(args.mmrec_epochs),
          '--eval-reps', str(args.mmrec_eval_reps),
          '--mem-limit-gib', f'{args.mmrec_mem_limit_gib:.2f}']
  if args.mmrec_time_limit:
    argv += ['--time-limit', str(args.mmrec_time_limit)]
  return argv


def run_mmrec(args: argparse.Namespace, model: str) -> dict[str, Any]:
  argv = mmrec_argv(args, model)
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
      p for p in (str(common.REPO), env.get('PYTHONPATH')) if p)
  # The worker stops starting epochs at 80 % of its limit; the kill is the
  # backstop, a little after.
  timeout = (args.mmrec_time_limit * 1.25 if args.mmrec_time_limit
             else args.timeout)
  r = common.run_worker(argv, cwd=common.REPO, env=env, timeout_s=timeout,
                        echo=args.echo)
  r['argv'] = argv
  return r


def official_base_argv(args: argparse.Namespace, model: str) -> list[str]:
  """official_worker.py's command line for `model`, up to the run flags."""
  src = args.official_src.get(model)
  if src is None:
    raise SystemExit(f'table3: {model}: pass --official-src {model}=PATH '
                     '(the official checkout: DiffMM root, MMSSL/MMSSL)')
  presets = official_worker.PRESETS[model]
  preset = args.dataset if args.dataset in presets else 'defaults'
  return [args.ref_python, str(HERE / 'official_worker.py'), '--codebase',
          model, '--src', str(src), '--preset', preset, '--folder',
          str(args.folder), '--name', args.name, '--seed', '0']


def official_problems(args: argparse.Namespace, model: str) -> list[str]:
  """Our config vs the official parser's flags for the same command."""
  r = common.run_worker(official_base_argv(args, model) + ['--args-only'],
                        cwd=common.REPO, timeout_s=300, echo=args.echo)
  if 'error' in r:
    return [f'the official parser did not run: {r["error"][-500:]}']
  return official_settings.differences(
      model, our_config(model, args.dataset), r['official_args'])


def run_official(args: argparse.Namespace, model: str) -> dict[str, Any]:
  """The official code's epochs, in table3's shape (see `official_shape`)."""
  argv = official_base_argv(args, model) + [
      '--epochs', str(args.official_epochs)]
  if model in args.step_timed:
    argv += ['--batches', str(args.timed_steps)]
  r = common.run_worker(argv, cwd=common.REPO, timeout_s=args.timeout,
                        echo=args.echo)
  r['argv'] = argv
  return r if 'error' in r else official_shape(r)


def official_shape(r: dict[str, Any]) -> dict[str, Any]:
  """Adds epoch_s (whole epochs) or epoch_s_extrapolated (`--batches`: the
  median epoch's seconds per batch x the epoch's batches) and eval_s (the
  official test passes: MMSSL valid + test, DiffMM test only)."""
  epochs = r['metrics_per_epoch']
  train = [e['train_s'] for e in epochs]
  if r.get('batches_timed'):
    r['epoch_s'] = {'n': 0}
    r['epoch_s_extrapolated'] = (common.summarize(train)['median']
                                 / r['batches_timed'] * r['n_batch'])
  else:
    r['epoch_s'] = common.summarize(train)
  r['eval_s'] = common.summarize(
      [e['test_s'] + e.get('valid_s', 0.0) for e in epochs])
  return r


def epoch_seconds(r: dict[str, Any]) -> tuple[float | None, bool]:
  """(seconds per epoch, extrapolated?) of a result; (None, False) if none."""
  if 'error' in r:
    return None, False
  if r.get('epoch_s', {}).get('n'):
    return r['epoch_s']['median'], False
  if r.get('epoch_s_extrapolated') is not None:
    return r['epoch_s_extrapolated'], True
  return None, False


def failure(r: dict[str, Any]) -> str:
  """A short cell text for a failed run: its last error line."""
  text = r.get('error', '')
  if text.startswith('not run'):
    return text
  if "can't allocate memory" in text or 'MemoryError' in text:
    return 'failed: out of memory'
  if r.get('returncode') in (-9, 137):
    return 'failed: killed (time-out or memory)'
  lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
  last = lines[-1] if lines else f"rc={r.get('returncode')}"
  return 'failed: ' + last[:60].replace('|', '/')


def _said(r: dict[str, Any]) -> str:
  """'<s>/epoch[ (EXTRAPOLATED)], eval <s>' of a finished side."""
  sec, extra = epoch_seconds(r)
  return (f"{sec:.3g} s/epoch{' (EXTRAPOLATED)' if extra else ''}, eval "
          f"{r['eval_s']['median']:.3g} s")


def _fmt_s(x: float | None) -> str:
  if x is None:
    return 'n/a'
  return f'{x:.3g}' if x < 100 else f'{x:.0f}'


def _fmt_gib(x: float | None) -> str:
  return 'n/a' if x is None else f'{x:.2f} GiB'


def reference_of(model: str) -> str:
  """The key of `model`'s reference run in an entry: 'official' (the
  official code, for the models that are not in MMRec) or 'mmrec'."""
  return 'official' if model in OFFICIAL_MODELS else 'mmrec'


def table_row(model: str, entry: dict[str, Any]) -> dict[str, Any]:
  """The numbers of one model's row (None where a side has none)."""
  side = reference_of(model)
  ours, ref = entry.get('ours', {}), entry.get(side, {})
  o_s, o_extra = epoch_seconds(ours)
  r_s, r_extra = epoch_seconds(ref)
  row = {'model': model,
         'reference': 'MMRec' if side == 'mmrec' else 'official',
         'ours_epoch_s': o_s, 'ours_extrapolated': o_extra,
         'ref_epoch_s': r_s, 'ref_extrapolated': r_extra,
         'ratio': (r_s / o_s) if o_s and r_s else None}
  for name, r in (('ours', ours), ('ref', ref)):
    ok = 'error' not in r
    row[f'{name}_peak_rss_gib'] = r.get('peak_rss_gib') if ok else None
    row[f'{name}_eval_s'] = r.get('eval_s', {}).get('median') if ok else None
    row[f'{name}_failed'] = None if ok else failure(r)
  return row


def render_markdown(rows: Sequence[dict[str, Any]], header: str,
                    our_limit_gib: float = OUR_LIMIT_GIB) -> str:
  """Table 3's shape: model | s/epoch both sides | ratio | peak RSS both."""
  out = [header, '',
         '| model | reference | ours s/epoch | reference s/epoch | ratio '
         '| ours peak RSS | reference peak RSS |',
         '|---|---|---|---|---|---|---|']
  extrapolated = over = False
  for r in rows:
    cells = {}
    for name in ('ours', 'ref'):
      extra = r[f'{name}_extrapolated'] and not r[f'{name}_failed']
      extrapolated |= bool(extra)
      cells[name] = r[f'{name}_failed'] or (
          ('~' if extra else '') + _fmt_s(r[f'{name}_epoch_s']))
    ratio = 'n/a' if r['ratio'] is None else f"{r['ratio']:.3g}x"
    ours_m = '' if r['ours_failed'] else _fmt_gib(r['ours_peak_rss_gib'])
    if (r['ours_peak_rss_gib'] is not None
        and r['ours_peak_rss_gib'] > our_limit_gib):
      ours_m += ' (over)'
      over = True
    ref_m = '' if r['ref_failed'] else _fmt_gib(r['ref_peak_rss_gib'])
    out.append(f"| {display_name(r['model'])} | {r['reference']} | "
               f"{cells['ours']} | {cells['ref']} | {ratio} | {ours_m} "
               f'| {ref_m} |')
  out.append('')
  out.append('ratio = reference s/epoch / ours (> 1: ours is faster). Peak '
             "RSS of each side's own process (wait4 ru_maxrss). reference: "
             "MMRec's own model, or the official code (not in MMRec).")
  if extrapolated:
    out.append('~ epoch EXTRAPOLATED: MMRec from timed batches (pre_epoch + '
               'first batch + median batch x (batches - 1)), no whole epoch '
               'having fitted in the time limit; a step-timed model '
               '(--step-timed) from its first --timed-steps steps an epoch '
               '(median x steps an epoch), on both sides.')
  if over:
    out.append(f'(over): our peak RSS is above {our_limit_gib:g} GiB.')
  out += ['', '| model | ours eval s (valid+test) | reference eval s '
          '(valid+test; official DiffMM: test only) |', '|---|---|---|']
  for r in rows:
    out.append(f"| {display_name(r['model'])} | "
               f"{_fmt_s(r['ours_eval_s'])} | {_fmt_s(r['ref_eval_s'])} |")
  return '\n'.join(out) + '\n'


def header_text(env: dict[str, Any], args: argparse.Namespace,
                shape: dict[str, Any] | None) -> str:
  size = (f"U={shape['n_users']} I={shape['n_items']} "
          f"n_train={shape['n_train']}" if shape else 'shape n/a')
  load = env.get('loadavg') or (float('nan'),) * 3
  return (f"# Table 3 ({args.dataset} shape: {args.npz}; {size})\n\n"
          f"{env.get('date')}; {env.get('cpu_count')} CPUs, load "
          f"{load[0]:.2f} at the start; jax {env.get('jax')} "
          f"({env.get('backend')}); the reference codes under "
          f"{args.ref_python}, MMRec with an address-space cap of "
          f"{args.mmrec_mem_limit_gib:.1f} GiB (out of memory: the process "
          'reached it).')


def _refuse_existing(*paths: pathlib.Path) -> None:
  for path in paths:
    if path.exists():
      sys.exit(f'table3: {path} exists; this command does not overwrite '
               'results: pass another --out')


def _write_atomic(path: pathlib.Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
  tmp.write_text(text)
  os.replace(tmp, path)


def default_mem_limit_gib() -> float:
  """90 % of the memory available now (0: unknown, no limit)."""
  avail = common.environment().get('mem_available_gib')
  return 0.9 * avail if avail else 0.0


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--worker', help=argparse.SUPPRESS)
  p.add_argument('--mmrec-src', type=pathlib.Path,
                 default=os.environ.get('MMREC_SRC'),
                 help='checkout of enoche/MMRec (outside this repository)')
  p.add_argument('--ref-python', default=os.environ.get(
      'REF_PYTHON', '/work/refvenv/bin/python'),
                 help='a Python with torch and torch_geometric')
  p.add_argument('--folder', type=pathlib.Path,
                 help='MMRec-format folder (from `data_prep synth`)')
  p.add_argument('--name', help='dataset name of the folder\'s .inter '
                 '(default: the folder name)')
  p.add_argument('--npz', type=pathlib.Path,
                 help='our .npz of the same folder (data_prep synth --npz)')
  p.add_argument('--dataset', default='clothing',
                 help='the data section of our configs: baby, sports or '
                 'clothing (configs/baseline.py:MODEL,DATASET)')
  p.add_argument('--models', default=','.join(DEFAULT_MODELS),
                 help='comma list of our model names')
  p.add_argument('--mmrec-models', '--reference-models',
                 dest='mmrec_models',
                 help='comma list of the models whose reference code runs '
                 'too (default: all of --models; e.g. leave out LATTICE on '
                 'Clothing, whose dense item graphs do not fit a small '
                 'machine)')
  p.add_argument('--official-src', action='append', default=[],
                 metavar='MODEL=PATH',
                 help=f'official checkout of {"/".join(OFFICIAL_MODELS)} '
                 '(DiffMM: the repository root; MMSSL: its MMSSL/ folder)')
  p.add_argument('--official-epochs', type=int, default=1,
                 help='epochs of the official code (each timed)')
  p.add_argument('--step-timed', default='mmssl',
                 help='comma list of models timed on their first '
                 '--timed-steps steps an epoch, both sides (an official '
                 'MMSSL epoch is 20-30 min on a 2-core CPU)')
  p.add_argument('--timed-steps', type=int, default=10)
  p.add_argument('--our-warmup', type=int, default=1)
  p.add_argument('--our-epochs', type=int, default=3)
  p.add_argument('--our-eval-reps', type=int, default=3)
  p.add_argument('--mmrec-batches', type=int, default=3)
  p.add_argument('--mmrec-warmup', type=int, default=1)
  p.add_argument('--mmrec-epochs', type=int, default=2)
  p.add_argument('--mmrec-eval-reps', type=int, default=1)
  p.add_argument('--mmrec-time-limit', type=float, default=1800,
                 help='seconds per MMRec model; whole epochs that would not '
                 'fit are left out (0: none)')
  p.add_argument('--mmrec-mem-limit-gib', type=float,
                 help='address-space cap of each MMRec process (default: '
                 '90%% of the memory available at the start)')
  p.add_argument('--our-limit-gib', type=float, default=OUR_LIMIT_GIB,
                 help='flag our peak RSS above this')
  p.add_argument('--timeout', type=float, default=3600,
                 help='seconds per worker (ours; MMRec without a time limit)')
  p.add_argument('--out', type=pathlib.Path,
                 help='output stem: writes STEM.json and STEM.md (default '
                 '$OUT or bench/out, table3_<name>)')
  p.add_argument('--echo', action='store_true',
                 help="show the workers' output")
  return p


def main() -> None:
  p = build_parser()
  args = p.parse_args()
  if args.worker:
    worker_main(args.worker)
    return
  models = [m for m in args.models.split(',') if m]
  known = (*mmrec_settings.MMREC_MODEL, *OFFICIAL_MODELS)
  for m in models:
    if m not in known:
      p.error(f'--models: {m!r} is not one of {list(known)}')
  needed = ['folder', 'npz']
  if any(reference_of(m) == 'mmrec' for m in models):
    needed.append('mmrec_src')
  for flag in needed:
    if getattr(args, flag) is None:
      p.error(f"--{flag.replace('_', '-')} is required")
  args.official_src = dict(item.partition('=')[::2]
                           for item in args.official_src)
  args.step_timed = {m for m in args.step_timed.split(',') if m}
  if args.timed_steps < 1:
    p.error('--timed-steps must be >= 1')
  args.name = args.name or args.folder.name
  if not (args.folder / f'{args.name}.inter').is_file():
    p.error(f'{args.folder}/{args.name}.inter not found (--folder, --name)')
  if not args.npz.is_file():
    p.error(f'{args.npz} not found: make it with `python -m data_prep synth '
            f'... --npz {args.npz}` from the same folder')
  stem = args.out or common.default_out_dir() / f'table3_{args.name}'
  json_path = stem.with_name(stem.name + '.json')
  md_path = stem.with_name(stem.name + '.md')
  _refuse_existing(json_path, md_path)
  if args.mmrec_mem_limit_gib is None:
    args.mmrec_mem_limit_gib = default_mem_limit_gib()

  # The same settings on both sides, or nothing is timed.
  problems = {m: (settings_problems(m, our_config(m, args.dataset))
                 if reference_of(m) == 'mmrec' else
                 official_problems(args, m)) for m in models}
  if any(problems.values()):
    for m, probs in problems.items():
      for line in probs:
        print(f'table3: {m}: {line}', file=sys.stderr)
    sys.exit('table3: our configs/baseline.py and the reference settings '
             '(mmrec_settings.CELLS, the official parsers) differ (above); '
             'align them before timing')

  env = common.print_environment()
  ref_ver = subprocess.run(
      [args.ref_python, '-c', 'import torch, torch_geometric; '
       'print(torch.__version__, torch_geometric.__version__)'],
      capture_output=True, text=True, check=False).stdout.strip()
  print(f'# reference codes under {args.ref_python} (torch, torch_geometric '
        f'= {ref_ver}); MMRec checkout {args.mmrec_src}, address-space cap '
        f'{args.mmrec_mem_limit_gib:.1f} GiB; official checkouts '
        f'{args.official_src}', flush=True)

  entries: dict[str, dict[str, Any]] = {}
  shape = None
  ref_models = (models if args.mmrec_models is None
                else args.mmrec_models.split(','))
  for m in models:
    entry = {'ours': run_ours(args, m)}
    ours = entry['ours']
    if 'error' in ours:
      print(f'{m}: ours FAILED (rc={ours.get("returncode")}):\n'
            f'{ours["error"][-1500:]}', flush=True)
    else:
      shape = shape or {k: ours[k] for k in ('n_users', 'n_items', 'n_train')}
      peak = ours['peak_rss_gib']
      verdict = ('within' if peak <= args.our_limit_gib else 'OVER')
      print(f"{m}: ours {_said(ours)}, compile {ours['compile_s']:.1f} s, "
            f"peak RSS {peak:.2f} GiB ({verdict} {args.our_limit_gib:g} "
            'GiB)', flush=True)
    side = reference_of(m)
    if m not in ref_models:
      entry[side] = {'error': 'not run (--reference-models)'}
      print(f'{m}: reference not run (--reference-models)', flush=True)
    else:
      ref = entry[side] = (run_mmrec if side == 'mmrec' else run_official)(
          args, m)
      if 'error' in ref:
        print(f'{m}: {side} FAILED (rc={ref.get("returncode")}):\n'
              f'{ref["error"][-1500:]}', flush=True)
      else:
        print(f"{m}: {side} {_said(ref)}, peak RSS "
              f"{ref['peak_rss_gib']:.2f} GiB", flush=True)
    entries[m] = entry
    rows = [table_row(k, v) for k, v in entries.items()]
    _write_atomic(json_path, json.dumps(
        {'env': env, 'reference_versions': ref_ver, 'argv': sys.argv,
         'settings': {k: mmrec_settings.CELLS[k] for k in entries
                      if reference_of(k) == 'mmrec'},
         'rows': rows, 'runs': entries}, indent=1, default=str) + '\n')
  text = render_markdown(rows, header_text(env, args, shape),
                         args.our_limit_gib)
  _write_atomic(md_path, text)
  print(text)
  print(f'# wrote {json_path} and {md_path}')


if __name__ == '__main__':
  main()
