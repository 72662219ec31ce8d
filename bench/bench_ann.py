"""faiss HNSW against hnswlib on an export's vectors: what picked the library.

  python -m venv /tmp/ann && /tmp/ann/bin/pip install numpy faiss-cpu hnswlib
  /tmp/ann/bin/python bench/bench_ann.py --export /work/serve/ex_layergcn_tiktok

Both build an HNSW graph over the item vectors with the same M,
efConstruction and efSearch, inner-product metric, and answer every user's
top k (training items left out by fetching k + |seen| and filtering, as
mentor_jax/serving/index.py does). Reported per library: build time,
Recall@k against the exact top k (numpy float64), and queries/s at 1 and
256 queries per call (median of --reps passes). Needs only numpy and the two
libraries (no jax): the export's .npy files are read directly.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

import numpy as np


def exact_top_k(users, items, seen, k):
  scores = users.astype(np.float64) @ items.T.astype(np.float64)
  for row, s in enumerate(seen):
    scores[row, s] = -np.inf
  return np.argsort(-scores, axis=1, kind='stable')[:, :k]


def filtered(ids, seen, k):
  return [[i for i in row if i >= 0 and i not in set(s)][:k]
          for row, s in zip(ids, seen)]


class Faiss:
  name = 'faiss-cpu IndexHNSWFlat'

  def __init__(self, items, m, ef_construction, ef_search):
    import faiss  # pylint: disable=g-import-not-at-top
    self.index = faiss.IndexHNSWFlat(items.shape[1], m,
                                     faiss.METRIC_INNER_PRODUCT)
    self.index.hnsw.efConstruction = ef_construction
    self.index.add(items)
    self.ef_search = ef_search

  def search(self, queries, fetch):
    self.index.hnsw.efSearch = max(self.ef_search, fetch)
    return self.index.search(queries, fetch)[1]


class Hnswlib:
  name = 'hnswlib Index(space="ip")'

  def __init__(self, items, m, ef_construction, ef_search):
    import hnswlib  # pylint: disable=g-import-not-at-top
    self.index = hnswlib.Index(space='ip', dim=items.shape[1])
    self.index.init_index(max_elements=len(items), M=m,
                          ef_construction=ef_construction, random_seed=0)
    self.index.add_items(items, np.arange(len(items)))
    self.ef_search = ef_search

  def search(self, queries, fetch):
    self.index.set_ef(max(self.ef_search, fetch))
    return self.index.knn_query(queries, k=fetch)[0].astype(np.int64)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--export', type=pathlib.Path, required=True)
  parser.add_argument('--k', type=int, default=20)
  parser.add_argument('--m', type=int, default=32)
  parser.add_argument('--ef-construction', type=int, default=200)
  parser.add_argument('--ef-search', type=int, default=128)
  parser.add_argument('--reps', type=int, default=5)
  args = parser.parse_args()
  load = lambda name: np.load(args.export / f'{name}.npy')
  users, items = load('user_emb'), load('item_emb')
  indptr, seen_items = load('seen_indptr'), load('seen_items')
  seen = [seen_items[indptr[u]:indptr[u + 1]] for u in range(len(users))]
  exact = exact_top_k(users, items, seen, args.k)
  print(f'{args.export}: {len(users)} users x {len(items)} items, dim '
        f'{items.shape[1]}; k {args.k}, M {args.m}, efConstruction '
        f'{args.ef_construction}, efSearch {args.ef_search}; '
        f'cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f}')
  for library in (Faiss, Hnswlib):
    t0 = time.perf_counter()
    index = library(items, args.m, args.ef_construction, args.ef_search)
    build = time.perf_counter() - t0
    # Each user fetches k + |seen| (grouped by that depth, as the service).
    depth = np.array([args.k + len(s) for s in seen])
    answers = [None] * len(users)
    for d in np.unique(depth):
      rows = np.flatnonzero(depth == d)
      ids = index.search(users[rows], int(min(d, len(items))))
      for r, kept in zip(rows, filtered(ids, [seen[r] for r in rows],
                                        args.k)):
        answers[r] = kept
    recall = np.mean([np.isin(e, a).mean() for e, a in zip(exact, answers)])
    rates = []
    for batch in (1, 256):
      n = 256 if batch == 1 else 4096
      times = []
      for _ in range(args.reps):
        t0 = time.perf_counter()
        for s in range(0, n, batch):
          s %= len(users) - batch
          index.search(users[s:s + batch], args.k + 32)
        times.append(time.perf_counter() - t0)
      rates.append(n / float(np.median(times)))
    print(f'{library.name}: build {build:.2f} s, Recall@{args.k} vs exact '
          f'{recall:.4f}, queries/s {rates[0]:.0f} (1 per call), '
          f'{rates[1]:.0f} (256 per call)')


if __name__ == '__main__':
  main()
