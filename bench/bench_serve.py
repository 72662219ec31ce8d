"""Serving: the indexes offline, then the HTTP service under load (loopback).

  python bench/bench_serve.py --export /work/serve/ex_tiktok \
      --out bench/out/serve_tiktok

1. Indexes, in this process: build time; the approximate index's Recall@20
   against exact top-20 for every user (seen items filtered); queries per
   second at batch 1 and batch 256 (median of --reps timed passes).
2. The service, per index: `mentor-serve` started as its own process on a
   free loopback port; --concurrency client threads (one keep-alive
   connection each) send requests for random users until --seconds pass or
   --max-requests are sent: single (GET /recommend, k=20) and batched (POST
   /recommend with --batch-users users). Reported: requests/s, users/s and
   p50/p99 latency. Client and server share this machine's cores.

Outputs <out>.json and <out>.md; existing files are not overwritten.
"""

from __future__ import annotations

import argparse
import http.client
import json
import pathlib
import socket
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# pylint: disable=g-import-not-at-top
from bench import common
from mentor_jax.serving import export as export_lib
from mentor_jax.serving import index as index_lib

K = 20


def offline(ex: export_lib.Export, reps: int) -> dict:
  users = np.arange(ex.n_users)
  seen = [ex.seen(u) for u in users]
  out = {}
  answers = {}
  for kind in index_lib.INDEX_KINDS:
    t0 = time.perf_counter()
    index = index_lib.make(kind, ex.item_emb)
    build = time.perf_counter() - t0
    index.search(ex.user_emb[:256], K, seen[:256])  # warm-up / compile
    answers[kind], _ = index.search(ex.user_emb, K, seen)
    rates = {}
    for batch in (1, 256):
      n = 256 if batch == 1 else 4096
      starts = np.arange(0, n, batch) % (ex.n_users - batch)
      def one_pass(starts=starts, batch=batch):
        for s in starts:
          index.search(ex.user_emb[s:s + batch], K, seen[s:s + batch])
      times = [common.time_call(one_pass)[0] for _ in range(reps)]
      rates[f'queries_per_s_batch{batch}'] = n / float(np.median(times))
    out[kind] = {'build_s': build, **rates}
  out['hnsw']['recall@20_vs_exact'] = index_lib.recall_against(
      answers['exact'], answers['hnsw'])
  return out


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _load(port: int, ex: export_lib.Export, batch_users: int, seconds: float,
          max_requests: int, concurrency: int) -> dict:
  """Closed-loop load: each thread sends its next request on an answer."""
  latencies: list[float] = []
  lock = threading.Lock()
  sent = [0]
  stop_at = time.perf_counter() + seconds

  def client(seed: int):
    rng = np.random.default_rng(seed)
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
    while time.perf_counter() < stop_at:
      with lock:
        if sent[0] >= max_requests:
          break
        sent[0] += 1
      users = ex.user_ids[rng.integers(0, ex.n_users, batch_users)].tolist()
      t0 = time.perf_counter()
      if batch_users == 1:
        conn.request('GET', f'/recommend?user={users[0]}&k={K}')
      else:
        conn.request('POST', '/recommend', json.dumps(
            {'users': users, 'k': K}), {'Content-Type': 'application/json'})
      response = conn.getresponse()
      body = response.read()
      if response.status != 200:
        raise RuntimeError(f'{response.status}: {body[:200]!r}')
      with lock:
        latencies.append(time.perf_counter() - t0)
    conn.close()

  t0 = time.perf_counter()
  threads = [threading.Thread(target=client, args=(s,))
             for s in range(concurrency)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  elapsed = time.perf_counter() - t0
  lat = np.asarray(latencies) * 1e3
  return {'requests': int(lat.size), 'seconds': elapsed,
          'requests_per_s': lat.size / elapsed,
          'users_per_s': lat.size * batch_users / elapsed,
          'p50_ms': float(np.percentile(lat, 50)),
          'p99_ms': float(np.percentile(lat, 99)),
          'batch_users': batch_users, 'concurrency': concurrency}


def online(export_dir: pathlib.Path, ex: export_lib.Export, kind: str,
           args: argparse.Namespace) -> dict:
  port = _free_port()
  proc = subprocess.Popen(
      [sys.executable, '-m', 'mentor_jax.serving.server', '--export',
       str(export_dir), '--port', str(port), '--index', kind],
      cwd=common.REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.time() + 300
    while True:
      try:
        socket.create_connection(('127.0.0.1', port), timeout=1).close()
        break
      except OSError:
        if proc.poll() is not None or time.time() > deadline:
          raise RuntimeError(f'server did not start: {proc.stderr.read()}')
        time.sleep(0.2)
    out = {}
    for name, batch in (('single', 1), ('batched', args.batch_users)):
      _load(port, ex, batch, 2.0, 10**9, args.concurrency)  # warm-up
      out[name] = _load(port, ex, batch, args.seconds, args.max_requests,
                        args.concurrency)
    return out
  finally:
    proc.terminate()
    proc.wait(timeout=30)


def markdown(result: dict) -> str:
  off = result['offline']
  lines = [f'# Serving {result["model"]} ({result["n_users"]} users x '
           f'{result["n_items"]} items, dim {result["dim"]})', '',
           f'{result["environment"]["date"]}; load at start '
           f'{result["environment"]["loadavg"]}', '',
           '| index | build s | queries/s (batch 1) | queries/s (batch 256) '
           '| Recall@20 vs exact |', '|---|---|---|---|---|']
  for kind in index_lib.INDEX_KINDS:
    o = off[kind]
    lines.append(f'| {kind} | {o["build_s"]:.2f} | '
                 f'{o["queries_per_s_batch1"]:.0f} | '
                 f'{o["queries_per_s_batch256"]:.0f} | '
                 f'{o.get("recall@20_vs_exact", 1.0):.4f} |')
  lines += ['', '| index | requests | users/request | requests/s | users/s '
            '| p50 ms | p99 ms |', '|---|---|---|---|---|---|---|']
  for kind, runs in result['online'].items():
    for r in runs.values():
      lines.append(f'| {kind} | {r["requests"]} | {r["batch_users"]} | '
                   f'{r["requests_per_s"]:.0f} | {r["users_per_s"]:.0f} | '
                   f'{r["p50_ms"]:.2f} | {r["p99_ms"]:.2f} |')
  return '\n'.join(lines) + '\n'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--export', type=pathlib.Path, required=True)
  parser.add_argument('--out', type=pathlib.Path, required=True)
  parser.add_argument('--seconds', type=float, default=15.0)
  parser.add_argument('--max-requests', type=int, default=20_000)
  parser.add_argument('--concurrency', type=int, default=8)
  parser.add_argument('--batch-users', type=int, default=64)
  parser.add_argument('--reps', type=int, default=5)
  args = parser.parse_args()
  for suffix in ('.json', '.md'):
    if args.out.with_suffix(suffix).exists():
      raise SystemExit(f'{args.out.with_suffix(suffix)} exists')
  env = common.environment()
  common.print_environment(env)
  ex = export_lib.load(args.export)
  result = {'environment': env, 'model': ex.manifest['display_name'],
            'n_users': ex.n_users, 'n_items': ex.n_items,
            'dim': ex.manifest['dim'], 'offline': offline(ex, args.reps),
            'online': {kind: online(args.export, ex, kind, args)
                       for kind in index_lib.INDEX_KINDS},
            'settings': vars(args) | {'export': str(args.export),
                                      'out': str(args.out)}}
  args.out.parent.mkdir(parents=True, exist_ok=True)
  common.write_json(args.out.with_suffix('.json'), result)
  text = markdown(result)
  args.out.with_suffix('.md').write_text(text)
  print(text)


if __name__ == '__main__':
  main()
