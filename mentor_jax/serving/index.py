"""Top-K by inner product over an export's item vectors, seen items left out.

Two indexes with one interface, `search(queries, k, exclude)`:
- `ExactIndex`: on the device, a matmul over blocks of items with a running
  top-k merged block by block, so the live scores are [queries, block]
  whatever the catalogue; exact (ties: lower item id first, as lax.top_k).
- `HnswIndex`: faiss's HNSW graph over the item vectors, inner-product
  metric, on the host. Each query fetches k + (its exclusion list) hits and
  drops the excluded ones, so filtering never leaves fewer than k where
  the graph search found them.

Shapes are bucketed to powers of two (queries, k, exclusion width), so a
service compiles a handful of programs, not one per request size.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

INDEX_KINDS = ('exact', 'hnsw')


def bucket(n: int, least: int = 1) -> int:
  """The power of two >= max(n, least)."""
  return 1 << (max(n, least) - 1).bit_length()


def pad_exclusions(exclude: Sequence[np.ndarray], n_rows: int,
                   fill: int, least: int = 1) -> np.ndarray:
  """[n_rows, width] int32 item ids per query, padded with `fill`; width is
  a power of two >= `least`."""
  lengths = np.fromiter((len(e) for e in exclude), np.int64, len(exclude))
  width = bucket(int(lengths.max(initial=1)), least)
  out = np.full((n_rows, width), fill, np.int32)
  if lengths.sum():
    row = np.repeat(np.arange(len(exclude)), lengths)
    col = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths,
                                               lengths)
    out[row, col] = np.concatenate([np.asarray(e) for e in exclude])
  return out


@functools.partial(jax.jit, static_argnames=('k', 'block'))
def blocked_top_k(queries: jax.Array, items: jax.Array, excluded: jax.Array,
                  n_items: jax.Array, *, k: int, block: int
                  ) -> tuple[jax.Array, jax.Array]:
  """(scores [Q, k], ids [Q, k]) of the k best items per query.

  Args:
    queries: [Q, D].
    items: [n_blocks * block, D]: the catalogue padded to whole blocks.
    excluded: [Q, L] ids to leave out; negative ids are no-ops.
    n_items: the catalogue's size; rows from there on are padding.
    k: any; a block contributes at most min(k, block) candidates.
    block: items scored at a time.
  """
  n_blocks = items.shape[0] // block
  blocks = items.reshape(n_blocks, block, -1)
  q = queries.shape[0]
  rows = jnp.arange(q)[:, None]

  def one_block(carry, xs):
    best_scores, best_ids = carry
    vectors, start = xs
    scores = jnp.matmul(queries, vectors.T, precision='highest')
    local = excluded - start
    # Ids of other blocks (and the padding) fall outside [0, block): dropped.
    local = jnp.where((local >= 0) & (local < block), local, block)
    scores = scores.at[rows, local].set(-jnp.inf, mode='drop')
    padding = start + jnp.arange(block) >= n_items
    scores = jnp.where(padding[None, :], -jnp.inf, scores)
    top_scores, top_local = jax.lax.top_k(scores, min(k, block))
    # Running best first, so a tie keeps the lower (earlier) item id.
    merged_scores = jnp.concatenate([best_scores, top_scores], axis=1)
    merged_ids = jnp.concatenate([best_ids, top_local + start], axis=1)
    keep_scores, keep = jax.lax.top_k(merged_scores, k)
    return (keep_scores, jnp.take_along_axis(merged_ids, keep, axis=1)), None

  init = (jnp.full((q, k), -jnp.inf, queries.dtype),
          jnp.full((q, k), -1, jnp.int32))
  starts = jnp.arange(n_blocks, dtype=jnp.int32) * block
  (scores, ids), _ = jax.lax.scan(one_block, init, (blocks, starts))
  return scores, ids


class ExactIndex:
  """Exact inner-product top-K on the default device."""

  kind = 'exact'
  MIN_QUERIES = 8  # the smallest query bucket

  def __init__(self, item_vectors: np.ndarray, block: int = 8192,
               exclusion_width: int = 64):
    """`exclusion_width`: the exclusion lists' width at least (a service
    passes its longest list, so that requests differ only in their number
    of queries: one program per query bucket, compiled by `warm_up`)."""
    n, dim = item_vectors.shape
    self.n_items = n
    self.exclusion_width = bucket(exclusion_width)
    self.block = min(bucket(block), bucket(n))
    n_pad = -(-n // self.block) * self.block
    padded = np.zeros((n_pad, dim), np.float32)
    padded[:n] = item_vectors
    self.items = jnp.asarray(padded)

  def search(self, queries: np.ndarray, k: int,
             exclude: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(ids [Q, k] int32, scores [Q, k] float32), best first; -1 / -inf pad
    rows that have fewer than k items left."""
    q = queries.shape[0]
    k_run = bucket(k)
    q_pad = bucket(q, self.MIN_QUERIES)
    padded = np.zeros((q_pad, queries.shape[1]), np.float32)
    padded[:q] = queries
    excluded = pad_exclusions(exclude, q_pad, fill=-1,
                              least=self.exclusion_width)
    scores, ids = blocked_top_k(jnp.asarray(padded), self.items,
                                jnp.asarray(excluded), self.n_items,
                                k=k_run, block=self.block)
    scores = np.asarray(scores)[:q, :k]
    ids = np.asarray(ids)[:q, :k].astype(np.int32)
    ids[np.isneginf(scores)] = -1
    return ids, scores

  def warm_up(self, k: int, max_queries: int) -> None:
    """Compiles the programs of every query bucket up to `max_queries`."""
    for q in range(self.MIN_QUERIES.bit_length() - 1,
                   bucket(max_queries).bit_length()):
      self.search(np.zeros((1 << q, self.items.shape[1]), np.float32), k,
                  [np.zeros(0, np.int32)] * (1 << q))


class HnswIndex:
  """Approximate inner-product top-K: faiss IndexHNSWFlat on the host."""

  kind = 'hnsw'

  def __init__(self, item_vectors: np.ndarray, m: int = 32,
               ef_construction: int = 200, ef_search: int = 128,
               threads: int | None = None):
    import faiss  # pylint: disable=g-import-not-at-top
    self.faiss = faiss
    if threads:
      faiss.omp_set_num_threads(threads)
    vectors = np.ascontiguousarray(item_vectors, np.float32)
    self.n_items, dim = vectors.shape
    self.index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    self.index.hnsw.efConstruction = ef_construction
    self.index.add(vectors)
    self.ef_search = ef_search

  def search(self, queries: np.ndarray, k: int,
             exclude: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """As ExactIndex.search, approximately.

    Each query fetches k + (its own exclusions) hits, so that k are left
    after filtering; queries are searched in groups of the same fetch
    (rounded up to a power of two), not all at the longest one's.
    """
    q = queries.shape[0]
    queries = np.ascontiguousarray(queries, np.float32)
    out_ids = np.full((q, k), -1, np.int32)
    out_scores = np.full((q, k), -np.inf, np.float32)
    lengths = np.fromiter((len(e) for e in exclude), np.int64, q)
    fetches = np.minimum([bucket(k + int(n)) for n in lengths], self.n_items)
    for fetch in np.unique(fetches):
      rows = np.flatnonzero(fetches == fetch)
      self.index.hnsw.efSearch = max(self.ef_search, int(fetch))
      scores, ids = self.index.search(queries[rows], int(fetch))
      excluded = pad_exclusions([exclude[r] for r in rows], len(rows), -1)
      hit = (ids >= 0) & ~(ids[:, :, None] == excluded[:, None, :]).any(-1)
      # Kept hits first, in the order faiss ranked them (a stable sort).
      order = np.argsort(~hit, axis=1, kind='stable')[:, :k]
      hit = np.take_along_axis(hit, order, axis=1)
      width = order.shape[1]  # < k only for a catalogue smaller than k
      out_ids[rows, :width] = np.where(
          hit, np.take_along_axis(ids, order, axis=1), -1)
      out_scores[rows, :width] = np.where(
          hit, np.take_along_axis(scores, order, axis=1), -np.inf)
    return out_ids, out_scores

  def warm_up(self, k: int, max_queries: int) -> None:
    del k, max_queries  # nothing to compile


def make(kind: str, item_vectors: np.ndarray, **options):
  """An index of `kind` ('exact' or 'hnsw') over the item vectors."""
  if kind == 'exact':
    return ExactIndex(item_vectors, **options)
  if kind == 'hnsw':
    return HnswIndex(item_vectors, **options)
  raise ValueError(f'index {kind!r}: expected one of {INDEX_KINDS}')


def recall_against(exact_ids: np.ndarray, approx_ids: np.ndarray) -> float:
  """Mean over queries of |approx ∩ exact| / |exact| (padding ignored)."""
  hits, total = 0, 0
  for e, a in zip(exact_ids, approx_ids):
    e = e[e >= 0]
    hits += np.isin(e, a[a >= 0]).sum()
    total += e.size
  return float(hits / max(total, 1))
