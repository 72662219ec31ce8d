"""The item MLP's first layer: forward and weight-gradient layouts, precisions.

MENTOR's largest dense product is F @ W1 with F the [I, 4096] visual
features and W1 the three visual encoders' first layers side by side
([4096, 768], model.item_mlps). Its weight gradient is Fᵀ G ([4096, I] x
[I, 768]). XLA on CPU has been reported to run that contraction over F's
leading axis several times slower than F @ W unless Fᵀ is stored once; this
bench measures it, so the model keeps whichever form is fast:

* fwd: F @ W1;
* wgrad_autodiff: the W1 cotangent exactly as `jax.grad` emits it from the
  forward (dot_general contracting F's axis 0);
* wgrad_stored_ft: the same product from a stored Fᵀ ([4096, I] row-major);
* fwd_bwd: `jax.value_and_grad` of a scalar of F @ W1 w.r.t. W1 (what a
  training step runs), per --precisions (mentor_jax/ops/precision.py).

  python bench/bench_matmul.py                      # Baby and Clothing items
  python bench/bench_matmul.py --items 7050 --reps 30

Variants run interleaved in one process (`common.time_interleaved`), so the
ratios come from the same minutes of a shared machine.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench import common  # pylint: disable=g-import-not-at-top


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--items', default='7050,23033',
                 help='comma list of item counts (Baby 7050, Clothing 23033)')
  p.add_argument('--in-dim', type=int, default=4096)
  p.add_argument('--out-dim', type=int, default=768)
  p.add_argument('--precisions', default='float32,tf32,bf16')
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--reps', type=int, default=4)
  p.add_argument('--out', help='JSON output (default: $OUT or bench/out)')
  args = p.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mentor_jax.ops import precision  # pylint: disable=g-import-not-at-top

  env = common.print_environment()
  rows = []
  for n_items in (int(x) for x in args.items.split(',')):
    kf, kw, kg = jax.random.split(jax.random.key(0), 3)
    f = jax.random.normal(kf, (n_items, args.in_dim), jnp.float32)
    w = jax.random.normal(kw, (args.in_dim, args.out_dim), jnp.float32)
    g = jax.random.normal(kg, (n_items, args.out_dim), jnp.float32)
    f_t = jnp.asarray(f.T)  # stored once, row-major [in_dim, I]
    hi = jax.lax.Precision.HIGHEST
    fns = {
        'fwd': jax.jit(lambda f, w: jnp.matmul(f, w, precision=hi)),
        'wgrad_autodiff': jax.jit(lambda f, g: jax.vjp(
            lambda w_: jnp.matmul(f, w_, precision=hi), w)[1](g)[0]),
        'wgrad_stored_ft': jax.jit(
            lambda f_t, g: jnp.matmul(f_t, g, precision=hi)),
    }
    calls = {
        'fwd': lambda: fns['fwd'](f, w),
        'wgrad_autodiff': lambda: fns['wgrad_autodiff'](f, g),
        'wgrad_stored_ft': lambda: fns['wgrad_stored_ft'](f_t, g),
    }
    for mode in args.precisions.split(','):
      fb = jax.jit(jax.value_and_grad(
          lambda w_, mode=mode: jnp.sum(jnp.tanh(
              precision.matmul(f, w_, mode)))))
      calls[f'fwd_bwd_{mode}'] = lambda fb=fb: fb(w)
    for call in calls.values():  # compile and warm up
      common.block(call())
    ref = calls['wgrad_autodiff']()
    err = float(jnp.max(jnp.abs(calls['wgrad_stored_ft']() - ref)))
    times = common.time_interleaved(calls, rounds=args.rounds,
                                    reps=args.reps)
    stats = {k: common.summarize(v) for k, v in times.items()}
    gflop = 2 * n_items * args.in_dim * args.out_dim / 1e9
    print(f'I={n_items} F=[{n_items}, {args.in_dim}] W=[{args.in_dim}, '
          f'{args.out_dim}] ({gflop:.1f} GFLOP per product); '
          f'max |stored_ft - autodiff| = {err:.2e}')
    for k, s in stats.items():
      print(f'  {k:22s} {common.fmt_stats(s, "ms", 1e3)}')
    ratio = (stats['wgrad_autodiff']['median']
             / stats['wgrad_stored_ft']['median'])
    print(f'  wgrad autodiff / stored Fᵀ = {ratio:.2f}x')
    rows.append({'n_items': n_items, 'in_dim': args.in_dim,
                 'out_dim': args.out_dim, 'gflop': gflop,
                 'max_abs_diff': err, 'stats': stats,
                 'autodiff_over_stored_ft': ratio})
  out = pathlib.Path(args.out) if args.out else (
      common.default_out_dir() / 'matmul.json')
  common.write_json(out, {'env': env, 'argv': sys.argv, 'results': rows})
  print(f'# wrote {out}')


if __name__ == '__main__':
  main()
