"""Naive vs fused InfoNCE: value+grad time and peak memory, by n.

The naive loss materializes the n x n logits (and autodiff keeps them, plus
their exp, for the backward pass); the fused one (`infonce.info_nce_fused`)
streams [block, n] tiles and recomputes them in its custom VJP. MENTOR calls
it on U x 128 users and I x 128 items every step (MENTOR_SPEC §7).

  python bench/bench_infonce.py                      # n = 2k, 8k, 20k, 40k
  python bench/bench_infonce.py --sizes 2000,8000 --reps 10

Each (impl, n) runs in its own fresh subprocess: jit compile timed on its
own (AOT), then warm-up, then timed reps of `jax.value_and_grad` w.r.t. both
inputs; its peak RSS (and, on an accelerator, the device's peak bytes) is
that workload's alone. The subprocesses run interleaved by n (naive, fused,
naive, fused, ...). The naive variant is skipped where its estimated peak
(3 n x n float32 arrays) exceeds --naive-max-gib.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench import common  # pylint: disable=g-import-not-at-top

IMPLS = ('naive', 'fused')


def naive_estimate_gib(n: int) -> float:
  """Peak of the naive value+grad: logits, exp/softmax, and its cotangent."""
  return 3 * n * n * 4 / common.GIB


def run_workload(spec: dict[str, Any]) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mentor_jax.ops import infonce  # pylint: disable=g-import-not-at-top

  jax.devices()  # start the runtime before measuring its footprint
  base_rss = common.vm_rss_gib()
  n, d, impl = spec['n'], spec['d'], spec['impl']
  block = spec['block_size']
  ka, kb = jax.random.split(jax.random.key(spec.get('seed', 0)))
  a = jax.random.normal(ka, (n, d), jnp.float32)
  b = a + 0.3 * jax.random.normal(kb, (n, d), jnp.float32)

  def loss(a, b):
    return infonce.info_nce_loss(a, b, spec['temp'], impl=impl,
                                block_size=block)

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  t0 = time.perf_counter()
  compiled = fn.lower(a, b).compile()
  compile_s = time.perf_counter() - t0
  first_s, out = common.time_call(lambda: compiled(a, b))
  # Few reps for big n: a single fused call at n=40k is ~1e12 FLOPs.
  reps = spec['reps']
  if spec.get('target_s') and first_s > 0:
    reps = int(min(max(spec['min_reps'], spec['target_s'] // first_s), reps))
  times, out = common.time_reps(lambda: compiled(a, b), warmup=spec['warmup'],
                                reps=reps)
  value, (ga, gb) = out
  return {'impl': impl, 'n': n, 'd': d, 'block_size': block,
          'compile_s': compile_s, 'first_s': first_s,
          'runtime_rss_gib': base_rss,
          'time_s': common.summarize(times), 'loss': float(value),
          'grad_norm': float(jnp.sqrt(jnp.sum(ga * ga) + jnp.sum(gb * gb)))}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--worker', help=argparse.SUPPRESS)
  p.add_argument('--sizes', default='2000,8000,20000,40000')
  p.add_argument('--dim', type=int, default=128)
  p.add_argument('--temp', type=float, default=0.2)
  p.add_argument('--block-size', type=int, default=1024)
  p.add_argument('--impls', default=','.join(IMPLS))
  p.add_argument('--warmup', type=int, default=1)
  p.add_argument('--reps', type=int, default=15, help='max timed reps')
  p.add_argument('--min-reps', type=int, default=3)
  p.add_argument('--target-s', type=float, default=30.0,
                 help='aim for about this many seconds of timed reps')
  p.add_argument('--naive-max-gib', type=float, default=8.0)
  p.add_argument('--timeout', type=float, default=1800)
  p.add_argument('--out')
  args = p.parse_args()
  if args.worker:
    spec = json.loads(args.worker)
    result = run_workload(spec)
    common.emit_result(result)
    return

  env = common.print_environment()
  print(f'# value+grad of InfoNCE(a, b), [n, {args.dim}] f32, tau '
        f'{args.temp}, fused block {args.block_size}; fresh process per cell',
        flush=True)
  header = (f"{'n':>7} {'impl':<6} {'compile s':>9} "
            f"{'time s: median [p10, p90]':>36} {'peak RSS GiB':>12} "
            f"{'dev GiB':>7} {'load':>5}")
  print(header)
  results = []
  for n in (int(s) for s in args.sizes.split(',')):
    values = {}
    for impl in args.impls.split(','):
      if impl == 'naive' and naive_estimate_gib(n) > args.naive_max_gib:
        print(f'{n:>7} {impl:<6} skipped: needs ~{naive_estimate_gib(n):.1f} '
              f'GiB > --naive-max-gib {args.naive_max_gib}', flush=True)
        results.append({'impl': impl, 'n': n, 'skipped': True,
                        'estimated_gib': naive_estimate_gib(n)})
        continue
      spec = {'impl': impl, 'n': n, 'd': args.dim, 'temp': args.temp,
              'block_size': args.block_size, 'warmup': args.warmup,
              'reps': args.reps, 'min_reps': args.min_reps,
              'target_s': args.target_s}
      r = common.run_worker(common.self_worker_argv(__file__, spec),
                            cwd=common.REPO, timeout_s=args.timeout)
      results.append(r)
      if 'error' in r:
        print(f'{n:>7} {impl:<6} FAILED rc={r["returncode"]}: '
              f'{r["error"][-300:]}', flush=True)
        continue
      values[impl] = r['loss']
      dev = r.get('device_peak_gib')
      print(f"{n:>7} {impl:<6} {r['compile_s']:>9.2f} "
            f"{common.fmt_stats(r['time_s']):>36} {r['peak_rss_gib']:>12.2f} "
            f"{(f'{dev:.2f}' if dev else '-'):>7} "
            f"{r['loadavg_before'][0]:>5.1f}", flush=True)
    if len(values) == 2:
      rel = abs(values['naive'] - values['fused']) / abs(values['naive'])
      print(f'{n:>7} naive vs fused loss: rel. diff {rel:.1e}', flush=True)
  out = pathlib.Path(args.out) if args.out else (
      common.default_out_dir() / 'infonce.json')
  common.write_json(out, {'env': env, 'argv': sys.argv, 'results': results})
  print(f'# wrote {out}')


if __name__ == '__main__':
  main()
