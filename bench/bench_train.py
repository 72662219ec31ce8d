"""Train-epoch time, step time, full-evaluation time and peak RSS of MENTOR.

Uses the real code paths: the trainer's compiled epoch
(`epoch.compile_epoch`: its begin and steps programs, run over the epoch's
segments as `train` runs them) and `metrics.Evaluator` (valid + test, full
ranking). Each variant runs in a fresh subprocess, so its peak RSS is its own.

  python bench/bench_train.py                       # Baby shape, full + light
  python bench/bench_train.py --variants full --epochs-timed 3
  python bench/bench_train.py --config configs/synth_clothing.py --steps 4

What is timed, per variant:

* compile: both programs' `lower(...).compile()` (AOT), reported on its own;
* epoch: `--warmup` untimed epochs, then `--epochs-timed` timed epochs of the
  compiled program, each until `block_until_ready` of its outputs;
* step: epoch time / steps in the program;
* eval: `Evaluator(...)` on the last step's embeddings (as the trainer does),
  one untimed call (it compiles), then `--eval-reps` timed calls; each call is
  the full valid + test ranking over all items.

`--steps N` (for shapes where a full epoch takes too long to repeat): the
compiled epoch program runs over a seeded random subset of N x batch_size
training rows, so it has exactly N steps. Each step does the same work as in
a full epoch (the forward pass covers every user and item, whatever the
batch), and the graph, features and negative-sampling tables are the full
dataset's. Only the per-epoch shuffle and negative sampling shrink with the
row count (a small part). The epoch time is then EXTRAPOLATED as step time x
full-epoch steps, and every output labels it `epoch_s_extrapolated`.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import pathlib
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench import common  # pylint: disable=g-import-not-at-top

VARIANTS = ('full', 'light')


def load_config(path: str, overrides: dict[str, Any] | None = None):
  """Imports a `configs/*.py` file and applies `key=value` overrides."""
  path = pathlib.Path(path)
  if not path.is_absolute():
    path = common.REPO / path
  spec = importlib.util.spec_from_file_location(f'_cfg_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in (overrides or {}).items():
    config[key] = value
  return config


def parse_overrides(items: list[str]) -> dict[str, Any]:
  """['lr=1e-3', 'spmm_kernel=csr'] -> {'lr': 0.001, 'spmm_kernel': 'csr'}."""
  out = {}
  for item in items:
    key, _, raw = item.partition('=')
    try:
      out[key] = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      out[key] = raw
  return out


def run_workload(spec: dict[str, Any]) -> dict[str, Any]:
  """Worker body: builds the trainer's objects and times them.

  Args:
    spec: {'config', 'overrides', 'variant', 'data_npz', 'steps', 'warmup',
      'epochs_timed', 'eval_reps', 'skip_eval', 'seed'}.

  Returns:
    JSON-able timings (seconds) and sizes.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from mentor_jax import data as data_lib
  from mentor_jax import datasets
  from mentor_jax import epoch as epoch_lib
  from mentor_jax import metrics as metrics_lib

  overrides = dict(spec.get('overrides') or {})
  if spec.get('data_npz'):
    overrides['data_npz'] = spec['data_npz']
  if spec['variant'] == 'light':
    # The light variant drops the graph-perturbation InfoNCE and with it the
    # four noise encoders (the model is built without them).
    overrides['mask_weight_g'] = 0.0
  config = load_config(spec['config'], overrides)
  jax.devices()  # start the runtime before measuring its footprint
  base_rss = common.vm_rss_gib()

  t0 = time.perf_counter()
  dataset = datasets.load_for_config(config)
  family, hp, data, graphdef, rest, state = epoch_lib.setup(config, dataset)
  n_train = dataset.n_train
  evaluator = metrics_lib.Evaluator.for_config(dataset, config)
  setup_s = time.perf_counter() - t0
  # VmHWM after each phase: tells which phase sets the peak.
  hwm = {'setup': common.vm_hwm_gib()}

  full_steps = data_lib.steps_per_epoch(n_train, hp.batch_size)
  steps = spec.get('steps')
  subset = bool(steps) and steps * hp.batch_size < n_train
  if subset:
    rng = np.random.default_rng(spec.get('seed', 0))
    rows = np.sort(rng.choice(n_train, steps * hp.batch_size, replace=False))
    data = data._replace(train_user=data.train_user[rows],
                         train_item=data.train_item[rows])
  prog_steps = data_lib.steps_per_epoch(int(data.train_user.shape[0]),
                                        hp.batch_size)

  kwargs = dict(graphdef=graphdef, family=family, hp=hp)
  compiled = epoch_lib.compile_epoch(state, rest, data, **kwargs)
  compile_s = compiled.compile_s
  hwm['compile'] = common.vm_hwm_gib()
  # As the trainer does: the compiler's freed heap goes back to the OS
  # before the program's buffers are allocated (--no-trim to measure it).
  if not spec.get('no_trim'):
    epoch_lib.release_freed_host_memory()
  xla_memory = _memory_analysis(*compiled.programs)

  def one_epoch():
    nonlocal state
    state, parts, scores = compiled(state, rest, data, n_steps=prog_steps)
    return state, parts, scores

  first_s, (state, parts, scores) = common.time_call(one_epoch)
  for _ in range(spec['warmup']):
    state, parts, scores = common.block(one_epoch())
  # time_first: for shapes too slow to run twice, the first run after the
  # AOT compile is the (only) timed one; results carry the flag.
  epoch_times = [first_s] if spec.get('time_first') else []
  for _ in range(spec['epochs_timed']):
    dt, (state, parts, scores) = common.time_call(one_epoch)
    epoch_times.append(dt)
  hwm['train'] = common.vm_hwm_gib()
  parts = jax.device_get(parts)
  losses = {k: float(np.mean(v)) for k, v in parts.items()}
  finite = all(bool(np.all(np.isfinite(v))) for v in parts.values())

  result: dict[str, Any] = {
      'config': spec['config'], 'variant': spec['variant'],
      'dataset': str(dataset.path), 'n_users': dataset.n_users,
      'n_items': dataset.n_items, 'n_train': n_train,
      'batch_size': hp.batch_size, 'full_epoch_steps': full_steps,
      'program_steps': prog_steps, 'row_subset': subset,
      'time_first': bool(spec.get('time_first')),
      'spmm_kernel': hp.spmm_kernel,
      'infonce_impl': getattr(hp, 'infonce_impl', None),
      'mask_weight_g': float(config.mask_weight_g),
      'runtime_rss_gib': base_rss, 'hwm_after_gib': hwm,
      'xla_memory_gib': xla_memory,
      'setup_s': setup_s, 'compile_s': compile_s,
      'first_program_s': first_s,
      'program_s': common.summarize(epoch_times),
      'step_s': common.summarize([t / prog_steps for t in epoch_times]),
      'losses_last_program': losses, 'losses_finite': finite,
  }
  step_median = result['step_s']['median']
  if subset:
    result['epoch_s_extrapolated'] = step_median * full_steps
  else:
    result['epoch_s'] = result['program_s']

  if not spec.get('skip_eval'):
    t0 = time.perf_counter()
    metrics = evaluator(*scores)  # compiles the ranking program
    result['eval_first_s'] = time.perf_counter() - t0
    eval_times = []
    for _ in range(spec['eval_reps']):
      t0 = time.perf_counter()
      evaluator(*scores)
      eval_times.append(time.perf_counter() - t0)
    result['eval_s'] = common.summarize(eval_times)
    result['valid_recall@10'] = metrics['valid']['recall@10']
    hwm['eval'] = common.vm_hwm_gib()
  return result


def _memory_analysis(*compiled) -> dict[str, float] | None:
  """XLA's own buffer sizes (GiB) of the compiled program with the most
  scratch (an epoch's steps program), where available.

  temp is the scratch the program needs at its peak on top of its arguments
  and outputs: on CPU it is most of the training-time RSS growth.
  """
  found = []
  for program in compiled:
    try:
      found.append(program.memory_analysis())
    except Exception:  # pylint: disable=broad-except
      pass
  found = [m for m in found if m is not None]
  if not found:
    return None
  m = max(found, key=lambda m: getattr(m, 'temp_size_in_bytes', 0))
  fields = ('temp_size_in_bytes', 'argument_size_in_bytes',
            'output_size_in_bytes', 'alias_size_in_bytes',
            'generated_code_size_in_bytes')
  return {f.replace('_size_in_bytes', ''): getattr(m, f) / common.GIB
          for f in fields if hasattr(m, f)}


def worker_main(raw: str) -> None:
  spec = json.loads(raw)
  result = run_workload(spec)
  result['env'] = common.environment()
  common.emit_result(result)


def run_variant(spec: dict[str, Any], timeout_s: float | None = None,
                echo: bool = False) -> dict[str, Any]:
  """Runs one workload in a fresh subprocess; adds its peak RSS."""
  return common.run_worker(common.self_worker_argv(__file__, spec),
                           cwd=common.REPO, timeout_s=timeout_s, echo=echo)


def describe(r: dict[str, Any]) -> str:
  """One human-readable block per workload."""
  if 'error' in r:
    return f"FAILED (rc={r.get('returncode')}):\n{r['error']}"
  lines = [
      f"{r['variant']}: U={r['n_users']} I={r['n_items']} "
      f"n_train={r['n_train']} B={r['batch_size']} "
      f"steps/epoch={r['full_epoch_steps']} (program: {r['program_steps']}"
      f"{', row subset' if r['row_subset'] else ''}) "
      f"kernel={r['spmm_kernel']} infonce={r['infonce_impl']} "
      f"mask_weight_g={r['mask_weight_g']}",
      f"  setup {r['setup_s']:.1f} s, compile {r['compile_s']:.1f} s, "
      f"first program run {r['first_program_s']:.2f} s",
      f"  step   {common.fmt_stats(r['step_s'])}"
      + (' (the first run after compile)' if r.get('time_first') else ''),
  ]
  if 'epoch_s' in r:
    lines.append(f"  epoch  {common.fmt_stats(r['epoch_s'])}")
  else:
    lines.append(f"  epoch  {r['epoch_s_extrapolated']:.1f} s "
                 f"EXTRAPOLATED (step median x {r['full_epoch_steps']})")
  if 'eval_s' in r:
    lines.append(f"  eval (valid+test) {common.fmt_stats(r['eval_s'])}, "
                 f"first call {r['eval_first_s']:.2f} s")
  if r.get('xla_memory_gib'):
    lines.append('  XLA buffers of the epoch program: ' + ', '.join(
        f'{k} {v:.2f}' for k, v in r['xla_memory_gib'].items()) + ' GiB')
  if r.get('hwm_after_gib'):
    lines.append('  VmHWM after ' + ', '.join(
        f'{k} {v:.2f}' for k, v in r['hwm_after_gib'].items() if v)
        + f" GiB (runtime alone {r['runtime_rss_gib']:.2f})")
  lines.append(
      f"  peak RSS {r['peak_rss_gib']:.2f} GiB (VmHWM "
      f"{r.get('vm_hwm_gib') or float('nan'):.2f})"
      + (f", device peak {r['device_peak_gib']:.2f} GiB"
         if r.get('device_peak_gib') else '')
      + f"; load {r['loadavg_before'][0]:.2f} -> {r['loadavg_after'][0]:.2f}"
      f"; losses finite={r['losses_finite']}")
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--worker', help=argparse.SUPPRESS)
  parser.add_argument('--config', default='configs/synth_baby.py')
  parser.add_argument('--data-npz', help='override config.data_npz')
  parser.add_argument('--variants', default='full,light',
                      help='comma list of full (the official objective) and '
                      'light (mask_weight_g=0: no graph-perturbation InfoNCE)')
  parser.add_argument('--variant', help='alias of --variants for one')
  parser.add_argument('--epochs-timed', type=int, default=2)
  parser.add_argument('--warmup', type=int, default=1,
                      help='untimed epochs (or N-step programs) after compile')
  parser.add_argument('--steps', type=int,
                      help='time N-step programs over a random row subset '
                      'and extrapolate the epoch (labelled so)')
  parser.add_argument('--eval-reps', type=int, default=5)
  parser.add_argument('--skip-eval', action='store_true')
  parser.add_argument('--set', action='append', default=[],
                      metavar='KEY=VALUE', help='config override')
  parser.add_argument('--no-trim', action='store_true',
                      help='skip epoch.release_freed_host_memory() after '
                      'the compile (to measure what it saves)')
  parser.add_argument('--timeout', type=float, help='seconds per workload')
  parser.add_argument('--out', help='JSON output (default: '
                      '$OUT or bench/out, train_<config>.json)')
  parser.add_argument('--echo', action='store_true',
                      help="show the workers' output")
  args = parser.parse_args()
  if args.worker:
    worker_main(args.worker)
    return

  env = common.print_environment()
  variants = (args.variant or args.variants).split(',')
  for v in variants:
    if v not in VARIANTS:
      parser.error(f'unknown variant {v!r}; expected one of {VARIANTS}')
  results = []
  for v in variants:
    spec = {'config': args.config, 'overrides': parse_overrides(args.set),
            'variant': v, 'data_npz': args.data_npz, 'steps': args.steps,
            'warmup': args.warmup, 'epochs_timed': args.epochs_timed,
            'eval_reps': args.eval_reps, 'skip_eval': args.skip_eval,
            'no_trim': args.no_trim}
    r = run_variant(spec, timeout_s=args.timeout, echo=args.echo)
    r['spec'] = spec
    print(describe(r), flush=True)
    results.append(r)
  out = pathlib.Path(args.out) if args.out else (
      common.default_out_dir() / f'train_{pathlib.Path(args.config).stem}.json')
  common.write_json(out, {'env': env, 'argv': sys.argv, 'results': results})
  print(f'# wrote {out}')


if __name__ == '__main__':
  main()
