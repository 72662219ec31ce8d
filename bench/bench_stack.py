"""K stacked runs (stack.py) against K sequential runs: time and memory.

  python bench/bench_stack.py --config configs/tiktok.py --ks 1 2 4 8
  python bench/bench_stack.py --config configs/synth_baby.py --steps 2 \
      --ks 1 2 4 8

Each workload runs in a fresh subprocess (its peak RSS is its own):

* `alone`: one run through the trainer's compiled epoch
  (`epoch.compile_epoch`); K sequential runs take K times its epoch and peak
  at its RSS (one run at a time);
* `stack K`: the stack of K seeds, `stack.StackedRuns`, one program.

Timed: `--warmup` untimed epochs after the AOT compile, then
`--epochs-timed` epochs, each until its outputs are ready; the median is
reported. `--steps N` runs each program over a seeded subset of N x
batch_size training rows (bench_train.py's rule: every step does a full
step's work, the graph and tables are the full dataset's) and the epoch is
EXTRAPOLATED as step time x the full epoch's steps.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench import bench_train  # pylint: disable=g-import-not-at-top
from bench import common  # pylint: disable=g-import-not-at-top


def run_workload(spec: dict[str, Any]) -> dict[str, Any]:
  """Worker body: one `alone` or `stack K` workload (see the module doc)."""
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from mentor_jax import data as data_lib
  from mentor_jax import datasets
  from mentor_jax import epoch as epoch_lib
  from mentor_jax import stack

  overrides = dict(spec.get('overrides') or {})
  if spec.get('data_npz'):
    overrides['data_npz'] = spec['data_npz']
  k = spec['k']
  if spec['mode'] == 'stack':
    overrides['seeds'] = tuple(range(k))
  config = bench_train.load_config(spec['config'], overrides)
  jax.devices()
  base_rss = common.vm_rss_gib()
  dataset = datasets.load_for_config(config)
  full_steps = data_lib.steps_per_epoch(dataset.n_train,
                                        config.train_batch_size)
  if spec['mode'] == 'stack':
    config.stack_parallel = spec['parallel']
    runs = stack.StackedRuns(config, dataset)
    data, state, hp = runs.data, runs.state, runs.hp
    parallel = runs.statics['parallel']
  else:
    family, hp, data, graphdef, rest, state = epoch_lib.setup(config, dataset)
    parallel = None
  steps = spec.get('steps')
  if steps and steps * hp.batch_size < dataset.n_train:
    rows = np.sort(np.random.default_rng(0).choice(
        dataset.n_train, steps * hp.batch_size, replace=False))
    data = data._replace(train_user=data.train_user[rows],
                         train_item=data.train_item[rows])
  prog_steps = data_lib.steps_per_epoch(int(data.train_user.shape[0]),
                                        hp.batch_size)
  if spec['mode'] == 'stack':
    runs.data, runs.n_steps = data, prog_steps
    compiled = runs.compile(state)
    one_run = lambda state: runs.run_epoch(state, [True] * k)
  else:
    compiled = epoch_lib.compile_epoch(state, rest, data, graphdef=graphdef,
                                       family=family, hp=hp)
    one_run = lambda state: compiled(state, rest, data, n_steps=prog_steps)
  compile_s = compiled.compile_s
  epoch_lib.release_freed_host_memory()
  # pylint: disable-next=protected-access
  xla = bench_train._memory_analysis(*compiled.programs)

  def one_epoch():
    nonlocal state
    state, parts, scores = one_run(state)
    return state, parts, scores

  for _ in range(spec['warmup']):
    common.block(one_epoch())
  times = []
  for _ in range(spec['epochs_timed']):
    dt, _ = common.time_call(one_epoch)
    times.append(dt)
  program_s = common.summarize(times)
  step = program_s['median'] / prog_steps
  return {'mode': spec['mode'], 'k': k, 'config': spec['config'],
          'parallel': parallel,
          'dataset': str(dataset.path), 'n_users': dataset.n_users,
          'n_items': dataset.n_items, 'full_epoch_steps': full_steps,
          'program_steps': prog_steps, 'compile_s': compile_s,
          'program_s': program_s, 'step_s': step,
          'epoch_s': step * full_steps,
          'extrapolated': prog_steps != full_steps,
          'runtime_rss_gib': base_rss, 'xla_memory_gib': xla,
          'n_params': int(sum(x.size for x in jax.tree.leaves(state.params)))}


def worker_main(raw: str) -> None:
  result = run_workload(json.loads(raw))
  result['env'] = common.environment()
  common.emit_result(result)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/tiktok.py')
  parser.add_argument('--override', action='append', default=[])
  parser.add_argument('--data-npz')
  parser.add_argument('--ks', type=int, nargs='+', default=[1, 2, 4, 8])
  parser.add_argument('--steps', type=int)
  parser.add_argument('--parallel', default='auto',
                      help="config.stack_parallel: 'auto', 'all' (one vmap) "
                      "or a count such as '2'")
  parser.add_argument('--warmup', type=int, default=1)
  parser.add_argument('--epochs-timed', type=int, default=3)
  parser.add_argument('--out', help='JSON results (default: bench/out/)')
  parser.add_argument('--worker')
  args = parser.parse_args()
  if args.worker:
    worker_main(args.worker)
    return
  common.print_environment()
  base = {'config': args.config, 'data_npz': args.data_npz,
          'overrides': bench_train.parse_overrides(args.override),
          'steps': args.steps, 'warmup': args.warmup,
          'epochs_timed': args.epochs_timed,
          'parallel': args.parallel}
  results = []
  for mode, k in [('alone', 1)] + [('stack', k) for k in args.ks]:
    spec = dict(base, mode=mode, k=k)
    r = common.run_worker(common.self_worker_argv(__file__, spec),
                          cwd=common.REPO)
    results.append(r)
    if 'error' in r:
      raise SystemExit(f'{mode} K={k} failed:\n{r["error"]}')
    print(json.dumps({key: r.get(key) for key in (
        'mode', 'k', 'epoch_s', 'step_s', 'peak_rss_gib', 'compile_s')}),
          flush=True)
  alone = results[0]
  how = (f'extrapolated from {alone.get("program_steps")} steps'
         if alone.get('extrapolated') else 'whole epochs')
  print(f'\n{args.config} ({alone.get("n_users")} users, '
        f'{alone.get("n_items")} items), {how}:')
  print('| K | stacked s/epoch | K sequential s/epoch | speed-up | '
        'stacked peak RSS GiB | sequential peak RSS GiB |')
  print('|---|---|---|---|---|---|')
  for r in results[1:]:
    seq = r['k'] * alone['epoch_s']
    print(f'| {r["k"]} | {r["epoch_s"]:.2f} | {seq:.2f} | '
          f'{seq / r["epoch_s"]:.2f}x | {r["peak_rss_gib"]:.2f} | '
          f'{alone["peak_rss_gib"]:.2f} |')
  out = args.out or (common.default_out_dir() / 'bench_stack.json')
  common.write_json(out, results)
  print(f'wrote {out}')


if __name__ == '__main__':
  main()
