"""Times one LightGCN-style step of graph work for each spmm kernel.

Workload (one MENTOR modality encoder's propagation): E = X + ÂX + Â²X over an
[N, d] table, then a BPR loss over a batch of (u, i, j) triples, under
jax.jit(loss) (fwd) and jax.jit(jax.value_and_grad(loss)) (fwd+bwd) with
respect to X. The graph is a jit argument, never a closed-over constant.

Variants run interleaved in rounds, because shared CPUs drift. Example:

  python bench/bench_propagation.py --rounds 5 --reps 5
  python bench/bench_propagation.py --kernels csr,segment_sum --pairs 50000
"""

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench import common  # pylint: disable=g-import-not-at-top
from mentor_jax.ops import sparse  # pylint: disable=g-import-not-at-top

# name -> (kernel, spmm keyword arguments); 'csr_at' passes an explicit Aᵀ,
# the general (non-symmetric) form, to show what it costs.
VARIANTS = {
    'csr': ('csr', {}),
    'csr_at': ('csr', {'a_t': True}),
    'bcoo': ('bcoo', {}),
    'segment_sum': ('segment_sum', {}),
    'segment_sum_sorted': ('segment_sum', {'indices_are_sorted': True}),
}


def build_graph(n_users: int, n_items: int, n_pairs: int,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Random bipartite Â = D^-1/2 A D^-1/2 with Zipf item popularity.

  Returns:
    Host (indptr, indices, values) of the symmetric N x N matrix, N = U + I.
  """
  rng = np.random.default_rng(seed)
  # Oversample, then keep unique pairs, until n_pairs are found.
  p = 1.0 / np.arange(1, n_items + 1) ** 0.8
  p /= p.sum()
  item_perm = rng.permutation(n_items)  # popular items spread over ids
  keys = np.empty(0, np.int64)
  while keys.size < n_pairs:
    m = 2 * (n_pairs - keys.size) + 1000
    u = rng.integers(0, n_users, m)
    i = item_perm[rng.choice(n_items, m, p=p)]
    keys = np.unique(np.concatenate([keys, u.astype(np.int64) * n_items + i]))
  keys = rng.permutation(keys)[:n_pairs]
  u, i = keys // n_items, keys % n_items
  n = n_users + n_items
  rows = np.concatenate([u, i + n_users])
  cols = np.concatenate([i + n_users, u])
  deg = np.bincount(rows, minlength=n).astype(np.float64)
  dinv = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1.0)), 0.0)
  vals = (dinv[rows] * dinv[cols]).astype(np.float32)
  order = np.lexsort((cols, rows))
  indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
  return indptr, cols[order], vals[order]


def make_loss(kernel: str, kwargs: dict, n_users: int):
  """BPR over the sum of layers 0..2, as in MENTOR's modality encoder."""

  def loss(x, a, a_t, u, i, j):
    h1 = sparse.spmm(a, x, kernel=kernel, a_t=a_t, **kwargs)
    h2 = sparse.spmm(a, h1, kernel=kernel, a_t=a_t, **kwargs)
    e = x + h1 + h2
    eu, ei, ej = e[u], e[n_users + i], e[n_users + j]
    diff = jnp.sum(eu * ei, -1) - jnp.sum(eu * ej, -1)
    return -jnp.mean(jax.nn.log_sigmoid(diff))

  return loss


def _time(fn, args) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return (time.perf_counter() - t0) * 1e3


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--users', type=int, default=39_387)
  parser.add_argument('--items', type=int, default=23_033)
  parser.add_argument('--pairs', type=int, default=200_000)
  parser.add_argument('--dim', type=int, default=64)
  parser.add_argument('--batch', type=int, default=2048)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument('--kernels', default=','.join(VARIANTS),
                      help=f'comma-separated subset of {list(VARIANTS)}')
  args = parser.parse_args()
  names = args.kernels.split(',')
  for name in names:
    if name not in VARIANTS:
      parser.error(f'unknown kernel {name!r}; choose from {list(VARIANTS)}')

  # Device, versions, CPU count and load average (the CPU may be shared).
  common.print_environment()
  t0 = time.perf_counter()
  indptr, indices, values = build_graph(args.users, args.items, args.pairs)
  a = sparse.csr_from_numpy(indptr, indices, values)
  a_t = sparse.transpose(a)
  print(f'graph: N={a.n_rows} nnz={a.nnz} d={args.dim} batch={args.batch} '
        f'(built in {time.perf_counter() - t0:.1f} s)')

  key = jax.random.key(0)
  kx, ku, ki, kj = jax.random.split(key, 4)
  x = jax.random.normal(kx, (a.n_rows, args.dim), jnp.float32) * 0.1
  u = jax.random.randint(ku, (args.batch,), 0, args.users)
  i = jax.random.randint(ki, (args.batch,), 0, args.items)
  j = jax.random.randint(kj, (args.batch,), 0, args.items)

  fns, call_args, compile_s = {}, {}, {}
  ref = None
  for name in names:
    kernel, kw = VARIANTS[name]
    kw = dict(kw)
    at = a_t if kw.pop('a_t', False) else None
    loss = make_loss(kernel, kw, args.users)
    fwd = jax.jit(loss)
    both = jax.jit(jax.value_and_grad(loss))
    call_args[name] = (x, a, at, u, i, j)
    t0 = time.perf_counter()
    jax.block_until_ready(fwd(*call_args[name]))
    out = jax.block_until_ready(both(*call_args[name]))
    compile_s[name] = time.perf_counter() - t0
    fns[name] = {'fwd': fwd, 'fwd+bwd': both}
    if ref is None:
      ref = out
    else:  # every variant computes the same thing
      np.testing.assert_allclose(out[0], ref[0], rtol=1e-4)
      np.testing.assert_allclose(out[1], ref[1], rtol=1e-3, atol=1e-7)
    for _ in range(2):  # warm-up
      for fn in fns[name].values():
        _time(fn, call_args[name])

  times = {(n, m): [] for n in names for m in ('fwd', 'fwd+bwd')}
  for _ in range(args.rounds):
    for name in names:
      for mode, fn in fns[name].items():
        for _ in range(args.reps):
          times[name, mode].append(_time(fn, call_args[name]))

  n = args.rounds * args.reps
  print(f'\n{args.rounds} rounds x {args.reps} reps = {n} timings per cell; '
        'ms: median [p10, p90]')
  print(f'{"variant":<20} {"compile+1st s":>13} {"fwd":>24} {"fwd+bwd":>24}')
  for name in names:
    cells = []
    for mode in ('fwd', 'fwd+bwd'):
      p10, p50, p90 = np.percentile(times[name, mode], [10, 50, 90])
      cells.append(f'{p50:8.1f} [{p10:6.1f}, {p90:6.1f}]')
    print(f'{name:<20} {compile_s[name]:>13.2f} {cells[0]:>24} {cells[1]:>24}')
  print(f'# load average after: {common.load_average()[0]:.2f}')


if __name__ == '__main__':
  main()
