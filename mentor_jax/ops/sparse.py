"""Sparse matrices as pytrees, and products with dense embedding tables.

`Csr` holds a fixed graph on the device; `spmm` multiplies it with a dense
[n, d] table. The graphs themselves (the normalized user-item adjacency Â,
the item-item kNN graph S) and what models do with them are in `graph.py`.

`spmm` has three interchangeable kernels with the same results:

* 'csr': `jax.experimental.sparse.BCSR` matmul, which lowers to the native
  `cpu_csr_sparse_dense_ffi` kernel on CPU, wrapped in a `custom_vjp` whose
  backward pass is Aᵀ @ g through the same kernel. Plain autodiff of BCSR
  transposes to BCOO gather + scatter, which gives the CPU speed-up away
  (ENGINEERING.md §4: 2.8-3.4x faster fwd+bwd than any alternative on CPU).
  On GPU without `JAX_BCOO_CUSPARSE_LOWERING=1` it silently falls back to
  gather/scatter.
* 'bcoo': `jax.experimental.sparse.BCOO` matmul, plain autodiff. A gather
  plus scatter-add on every backend; kept as a reference.
* 'segment_sum': `values[:, None] * x[indices]` summed into rows with
  `jax.ops.segment_sum`, plain autodiff. The recommended GPU/TPU path.

Graphs are constants: no kernel returns a gradient for the graph values (the
'csr' kernel returns none at all; the other two would differentiate through
`values` if asked, but callers never ask). Masking values per epoch (e.g.
FREEDOM-style edge dropout) must keep the index arrays fixed, so that shapes
and hence the compiled program do not change.
"""

import dataclasses
from typing import Literal

import jax
from jax.experimental import sparse as jsparse
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

Kernel = Literal['csr', 'bcoo', 'segment_sum']
KERNELS: tuple[str, ...] = ('csr', 'bcoo', 'segment_sum')


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Csr:
  """A CSR matrix as a pytree of device arrays, passed to `jit` as an argument.

  The array fields are pytree leaves (traced, shardable); `n_cols` is static
  metadata, so it is part of the jit cache key like every array shape. It is
  not derivable from the arrays, which is why this is a registered dataclass
  rather than a NamedTuple. Build it with `csr_from_numpy`, which also checks
  the invariants.

  Attributes:
    indptr: int32 [n_rows + 1], row pointers; indptr[0] == 0.
    indices: int32 [nnz], column of each entry. Duplicates (multi-edges) are
      allowed and add up.
    values: float32 [nnz], value of each entry.
    rows: int32 [nnz], row of each entry (the COO row ids, non-decreasing),
      precomputed once for the 'bcoo' and 'segment_sum' kernels.
    n_cols: number of columns (static).
  """
  indptr: jax.Array
  indices: jax.Array
  values: jax.Array
  rows: jax.Array
  n_cols: int = dataclasses.field(metadata=dict(static=True))

  @property
  def n_rows(self) -> int:
    return self.indptr.shape[0] - 1

  @property
  def shape(self) -> tuple[int, int]:
    return (self.n_rows, self.n_cols)

  @property
  def nnz(self) -> int:
    return self.indices.shape[0]

  def with_values(self, values: jax.Array) -> 'Csr':
    """Returns the same sparsity pattern with new values (e.g. a 0/1 mask)."""
    if values.shape != self.values.shape:
      raise ValueError(
          f'values shape {values.shape} != pattern {self.values.shape}; a new '
          'shape would force a recompile, mask entries to 0 instead.')
    return dataclasses.replace(self, values=values)


def csr_from_numpy(
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    n_cols: int | None = None,
) -> Csr:
  """Validates host CSR arrays and moves them to the default device.

  Args:
    indptr: [n_rows + 1] row pointers.
    indices: [nnz] column ids, any order within a row.
    values: [nnz] entry values.
    n_cols: number of columns; defaults to n_rows (square, as Â and S are).

  Returns:
    A `Csr` with int32 indices (indptr and indices must share a dtype or the
    CPU kernel silently falls back to gather/scatter) and float32 values.

  Raises:
    ValueError: if the arrays do not describe a valid CSR matrix. Out-of-range
      column ids are checked here because JAX gathers clamp them silently.
  """
  indptr = np.asarray(indptr, dtype=np.int64)
  indices = np.asarray(indices, dtype=np.int64)
  values = np.asarray(values, dtype=np.float32)
  n_rows = indptr.shape[0] - 1
  n_cols = n_rows if n_cols is None else int(n_cols)
  if indptr.ndim != 1 or n_rows < 0 or indptr[0] != 0:
    raise ValueError('indptr must be 1-D with indptr[0] == 0.')
  if np.any(np.diff(indptr) < 0):
    raise ValueError('indptr must be non-decreasing.')
  if indices.shape != (indptr[-1],) or values.shape != indices.shape:
    raise ValueError(
        f'indices {indices.shape} and values {values.shape} must both have '
        f'shape ({indptr[-1]},) = (indptr[-1],).')
  if indices.size and (indices.min() < 0 or indices.max() >= n_cols):
    raise ValueError(f'column ids must lie in [0, {n_cols}).')
  if max(n_rows, n_cols, indices.size) > np.iinfo(np.int32).max:
    raise ValueError('matrix too large for int32 indices.')
  rows = np.repeat(np.arange(n_rows, dtype=np.int32), np.diff(indptr))
  return Csr(
      indptr=jnp.asarray(indptr, dtype=jnp.int32),
      indices=jnp.asarray(indices, dtype=jnp.int32),
      values=jnp.asarray(values),
      rows=jnp.asarray(rows),
      n_cols=n_cols)


def csr_from_scipy(m: sp.spmatrix | sp.sparray) -> Csr:
  """`csr_from_numpy` for a scipy matrix (duplicates are kept as they are)."""
  m = sp.csr_matrix(m)
  return csr_from_numpy(m.indptr, m.indices, m.data, n_cols=m.shape[1])


def transpose(a: Csr) -> Csr:
  """Aᵀ as a new `Csr`, computed on the host (done once per fixed graph).

  Needed by the 'csr' kernel's backward pass for non-symmetric matrices.

  Args:
    a: the matrix, [n_rows, n_cols].

  Returns:
    Aᵀ, [n_cols, n_rows], with columns ascending within each row and
    duplicate entries kept.
  """
  rows, cols, vals = (np.asarray(v) for v in (a.rows, a.indices, a.values))
  # A stable sort by column keeps the old row order, so the new column ids
  # come out ascending within each new row.
  perm = np.argsort(cols, kind='stable')
  indptr = np.concatenate(
      [[0], np.cumsum(np.bincount(cols, minlength=a.n_cols))])
  return csr_from_numpy(indptr, rows[perm], vals[perm], n_cols=a.n_rows)


def _bcsr_matmul(a: Csr, x: jax.Array) -> jax.Array:
  # The CPU lowering needs data.dtype == x.dtype and indices.dtype ==
  # indptr.dtype, otherwise it falls back to gather/scatter without a word.
  mat = jsparse.BCSR((a.values, a.indices, a.indptr), shape=a.shape,
                     indices_sorted=True)
  return mat @ x


@jax.custom_vjp
def _csr_spmm(a: Csr, a_t: Csr, x: jax.Array) -> jax.Array:
  return _bcsr_matmul(a, x)


def _csr_spmm_fwd(a, a_t, x):
  return _bcsr_matmul(a, x), a_t


def _csr_spmm_bwd(a_t, g):
  # d(A x)/dx applied to g is Aᵀ g: the same native kernel on the transpose.
  # None: no cotangent for the graph, which is a constant.
  return None, None, _bcsr_matmul(a_t, g)


_csr_spmm.defvjp(_csr_spmm_fwd, _csr_spmm_bwd)


def _bcoo_spmm(a: Csr, x: jax.Array) -> jax.Array:
  mat = jsparse.BCOO((a.values, jnp.stack([a.rows, a.indices], axis=1)),
                     shape=a.shape, indices_sorted=True)
  return mat @ x


def _segment_sum_spmm(a: Csr, x: jax.Array,
                      indices_are_sorted: bool) -> jax.Array:
  msgs = a.values[:, None] * x[a.indices]  # [nnz, d]
  return jax.ops.segment_sum(msgs, a.rows, num_segments=a.n_rows,
                             indices_are_sorted=indices_are_sorted)


def spmm(
    a: Csr,
    x: jax.Array,
    *,
    kernel: Kernel = 'csr',
    a_t: Csr | None = None,
    indices_are_sorted: bool = False,
) -> jax.Array:
  """Sparse times dense: A @ X.

  Args:
    a: the sparse matrix, [n_rows, n_cols].
    x: dense [n_cols, d] (or [n_cols]).
    kernel: 'csr', 'bcoo' or 'segment_sum' (see the module docstring).
    a_t: Aᵀ from `transpose(a)`, used by the 'csr' backward pass. None means
      A is symmetric, so A itself serves. The autodiff kernels ignore it.
    indices_are_sorted: 'segment_sum' only: tell XLA that the row ids are
      sorted (they are). Measure both on GPU: some sorted-scatter emitters
      have been slow (openxla/xla#22233).

  Returns:
    [n_rows, d] (or [n_rows]) in the promoted dtype of `a.values` and `x`.
  """
  if x.shape[0] != a.n_cols:
    raise ValueError(f'x has {x.shape[0]} rows, A has {a.n_cols} columns.')
  if a_t is not None and a_t.shape != (a.n_cols, a.n_rows):
    raise ValueError(f'a_t shape {a_t.shape} != transpose of {a.shape}.')
  vector = x.ndim == 1
  if vector:
    x = x[:, None]
  # One dtype for both operands, since a mismatch disables the CSR kernel.
  dtype = jnp.promote_types(a.values.dtype, x.dtype)
  x = x.astype(dtype)
  if a.values.dtype != dtype:
    a = a.with_values(a.values.astype(dtype))
  if kernel == 'csr':
    if a_t is None:
      a_t = a
    elif a_t.values.dtype != dtype:
      a_t = a_t.with_values(a_t.values.astype(dtype))
    out = _csr_spmm(a, a_t, x)
  elif kernel == 'bcoo':
    out = _bcoo_spmm(a, x)
  elif kernel == 'segment_sum':
    out = _segment_sum_spmm(a, x, indices_are_sorted)
  else:
    raise ValueError(f'unknown kernel {kernel!r}; expected one of {KERNELS}.')
  return out[:, 0] if vector else out


def pick_default_kernel() -> Kernel:
  """'csr' on CPU (native kernel), 'segment_sum' on GPU/TPU.

  On GPU the BCSR path only reaches cuSPARSE with the (default off)
  `jax_bcoo_cusparse_lowering` flag; otherwise it is the same gather/scatter
  as 'segment_sum' with extra overhead. TPU has no sparse kernel at all.
  """
  return 'csr' if jax.default_backend() == 'cpu' else 'segment_sum'
