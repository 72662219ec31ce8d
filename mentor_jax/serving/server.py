"""An HTTP service of an export's recommendations (FastAPI on uvicorn).

  mentor-serve --export export/tiktok --port 8000 [--index hnsw]
  curl 'http://127.0.0.1:8000/recommend?user=42&k=10'

  GET  /recommend?user=ID&k=20    top-k unseen items of a user
  POST /recommend {"users": [ID, ...], "k": 20}   the same for many users
  GET  /similar?item=ID&k=20      items nearest an item's vector (not itself)
  GET  /health, GET /info         liveness; model, dataset, metrics, index

Ids are the source ids of the export (`data_prep import`'s mappings, else
the dataset's ids). Every bad input is a 4xx JSON body
{"error": message, "field": name}, never a traceback.

Requests that arrive together are scored together: each one's queries go
into a queue, and one worker takes what is queued (up to --max-batch
queries, waiting at most --batch-window-ms for more after the first) and
ranks it in one index call, off the event loop.

It binds the loopback interface by default; --host 0.0.0.0 exposes it on
every interface (put it behind a reverse proxy with TLS to do that).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
import time
from typing import Any, Sequence, Union

import fastapi
from fastapi import exceptions as fastapi_exceptions
from fastapi import responses
import numpy as np
import pydantic
from starlette import exceptions as starlette_exceptions

from mentor_jax.serving import export as export_lib
from mentor_jax.serving import index as index_lib

DEFAULT_K = 20
MAX_USERS_PER_REQUEST = 10_000


class BadInput(Exception):
  """A request the client can fix: becomes {"error", "field"} with a 4xx."""

  def __init__(self, status: int, field: str, message: str):
    super().__init__(message)
    self.status, self.field, self.message = status, field, message


@dataclasses.dataclass
class _Pending:
  queries: np.ndarray  # [n, D]
  exclude: list[np.ndarray]
  k: int
  future: asyncio.Future


class Batcher:
  """Ranks the queries of concurrent requests in one index call."""

  def __init__(self, index, max_batch: int, window_s: float):
    self.index, self.max_batch, self.window_s = index, max_batch, window_s
    self.queue: asyncio.Queue[_Pending] | None = None
    self.calls = 0
    self.queries = 0
    self.requests = 0

  async def rank(self, queries: np.ndarray, exclude: list[np.ndarray],
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    future = asyncio.get_running_loop().create_future()
    await self.queue.put(_Pending(queries, exclude, k, future))
    return await future

  async def run(self) -> None:
    """The worker: forever, gather what is queued and rank it at once."""
    loop = asyncio.get_running_loop()
    while True:
      batch = [await self.queue.get()]
      size = len(batch[0].queries)
      deadline = loop.time() + self.window_s
      while size < self.max_batch:
        remaining = deadline - loop.time()
        try:
          item = (self.queue.get_nowait() if remaining <= 0 else
                  await asyncio.wait_for(self.queue.get(), remaining))
        except (asyncio.QueueEmpty, asyncio.TimeoutError):
          break
        batch.append(item)
        size += len(item.queries)
      await self._rank_batch(loop, batch)

  async def _rank_batch(self, loop, batch: list[_Pending]) -> None:
    queries = np.concatenate([p.queries for p in batch])
    exclude = [e for p in batch for e in p.exclude]
    k = max(p.k for p in batch)
    try:
      ids, scores = await loop.run_in_executor(
          None, self.index.search, queries, k, exclude)
    except Exception as e:  # pylint: disable=broad-except
      for p in batch:
        if not p.future.done():
          p.future.set_exception(e)
      return
    self.calls += 1
    self.queries += len(queries)
    self.requests += len(batch)
    start = 0
    for p in batch:
      n = len(p.queries)
      if not p.future.done():  # a client that went away cancelled it
        p.future.set_result((ids[start:start + n, :p.k],
                             scores[start:start + n, :p.k]))
      start += n


def parse_body(raw: bytes) -> 'RecommendBody':
  """The POST body as JSON whatever its content type (curl -d sends a form
  type), checked; every fault is a BadInput naming the field."""
  try:
    obj = json.loads(raw)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise BadInput(400, 'body', f'the body is not valid JSON ({e}); expected '
                   '{"users": [ID, ...], "k": K}') from e
  if not isinstance(obj, dict):
    raise BadInput(400, 'body', 'expected a JSON object {"users": [ID, ...], '
                   f'"k": K}}, found {type(obj).__name__}')
  try:
    return RecommendBody.model_validate(obj)
  except pydantic.ValidationError as e:
    first = e.errors()[0]
    field = str(first['loc'][0]) if first.get('loc') else 'body'
    raise BadInput(400, field, f'{field}: {first["msg"]}') from e


class RecommendBody(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra='forbid')
  users: list[Union[pydantic.StrictStr, pydantic.StrictInt]]
  k: pydantic.StrictInt = DEFAULT_K


def _json(content: dict) -> responses.JSONResponse:
  # A response built here skips FastAPI's jsonable_encoder, which walks
  # every float of a long score list in Python.
  return responses.JSONResponse(content)


def create_app(export: export_lib.Export, index_kind: str = 'exact',
               max_batch: int = 1024, batch_window_ms: float = 2.0,
               **index_options) -> fastapi.FastAPI:
  """The service of `export` over an index of `index_kind`."""
  if index_kind == 'exact':  # every user's seen list fits one width
    index_options.setdefault('exclusion_width', max(
        int(np.diff(export.seen_indptr).max(initial=1)), 1))
  index = index_lib.make(index_kind, export.item_emb, **index_options)
  batcher = Batcher(index, max_batch, batch_window_ms / 1000)
  user_row = {u: row for row, u in enumerate(export.user_ids.tolist())}
  item_row = {i: row for row, i in enumerate(export.item_ids.tolist())}
  item_ids = export.item_ids
  started = time.time()

  @contextlib.asynccontextmanager
  async def lifespan(_):
    batcher.queue = asyncio.Queue()
    # Compile the common shapes before the first request.
    await asyncio.get_running_loop().run_in_executor(
        None, index.warm_up, DEFAULT_K, max_batch)
    worker = asyncio.create_task(batcher.run())
    yield
    worker.cancel()

  app = fastapi.FastAPI(title='mentor_jax recommendations', lifespan=lifespan)

  def check_k(k: int) -> int:
    if not 1 <= k <= export.n_items:
      raise BadInput(400, 'k', f'k={k}: expected 1 <= k <= {export.n_items} '
                     '(the items)')
    return k

  def rows_of(ids: Sequence[Any], table: dict[str, int], field: str,
              kind: str) -> np.ndarray:
    rows = [table.get(str(i), -1) for i in ids]
    unknown = [str(i) for i, r in zip(ids, rows) if r < 0]
    if unknown:
      raise BadInput(404, field, f'unknown {kind} id(s): {unknown[:10]}')
    return np.asarray(rows, np.int64)

  def listing(ids: np.ndarray, scores: np.ndarray) -> dict[str, list]:
    keep = ids >= 0
    return {'items': item_ids[ids[keep]].tolist(),
            'scores': scores[keep].astype(float).tolist()}

  async def recommend_rows(users: Sequence[Any], k: int,
                           field: str) -> list[dict]:
    rows = rows_of(users, user_row, field, 'user')
    ids, scores = await batcher.rank(export.user_emb[rows],
                                     [export.seen(r) for r in rows], k)
    return [{'user': str(u), **listing(i, s)}
            for u, i, s in zip(users, ids, scores)]

  @app.get('/recommend')
  async def recommend(user: str, k: int = DEFAULT_K):
    return _json((await recommend_rows([user], check_k(k), 'user'))[0])

  @app.post('/recommend')
  async def recommend_many(request: fastapi.Request):
    body = parse_body(await request.body())
    if not 1 <= len(body.users) <= MAX_USERS_PER_REQUEST:
      raise BadInput(400, 'users', f'expected 1 to {MAX_USERS_PER_REQUEST} '
                     f'users, found {len(body.users)}')
    return _json({'results': await recommend_rows(
        body.users, check_k(body.k), 'users')})

  @app.get('/similar')
  async def similar(item: str, k: int = DEFAULT_K):
    check_k(k)
    if k > export.n_items - 1:
      raise BadInput(400, 'k', f'k={k}: expected at most '
                     f'{export.n_items - 1} (the other items)')
    rows = rows_of([item], item_row, 'item', 'item')
    ids, scores = await batcher.rank(export.item_emb[rows],
                                     [rows.astype(np.int32)], k)
    return _json({'item': item, **listing(ids[0], scores[0])})

  @app.get('/health')
  async def health():
    return {'status': 'ok'}

  @app.get('/info')
  async def info():
    m = export.manifest
    return {key: m.get(key) for key in (
        'model', 'display_name', 'dataset', 'checkpoint', 'epoch',
        'embeddings', 'metrics', 'exported_at', 'n_users', 'n_items',
        'n_new_items', 'dim', 'ids_from')} | {
            'index': index.kind, 'uptime_s': round(time.time() - started, 1),
            'batching': {'index_calls': batcher.calls,
                         'requests': batcher.requests,
                         'queries': batcher.queries,
                         'max_batch': max_batch,
                         'window_ms': batch_window_ms}}

  @app.exception_handler(BadInput)
  async def bad_input(_, e: BadInput):
    return responses.JSONResponse({'error': e.message, 'field': e.field},
                                  status_code=e.status)

  @app.exception_handler(fastapi_exceptions.RequestValidationError)
  async def invalid(_, e: fastapi_exceptions.RequestValidationError):
    first = e.errors()[0] if e.errors() else {}
    loc = [str(x) for x in first.get('loc', ()) if x not in ('query', 'body')]
    field = loc[0] if loc else 'body'
    if first.get('type') == 'missing':
      message = f'{field} is required'
    else:
      message = f'{field}: {first.get("msg", "invalid")}'
    return responses.JSONResponse({'error': message, 'field': field},
                                  status_code=400)

  @app.exception_handler(starlette_exceptions.HTTPException)
  async def http_error(request: fastapi.Request, e):
    return responses.JSONResponse(
        {'error': f'{request.method} {request.url.path}: {e.detail}',
         'field': None}, status_code=e.status_code)

  @app.exception_handler(Exception)
  async def internal(_, e: Exception):  # a bug: say so, without a traceback
    return responses.JSONResponse(
        {'error': f'internal error ({type(e).__name__})', 'field': None},
        status_code=500)

  return app


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--export', required=True, help='a mentor-export folder')
  parser.add_argument('--host', default='127.0.0.1',
                      help='interface to bind (default loopback only)')
  parser.add_argument('--port', type=int, default=8000)
  parser.add_argument('--index', default='exact',
                      choices=index_lib.INDEX_KINDS)
  parser.add_argument('--max-batch', type=int, default=1024,
                      help='queries ranked in one index call at most')
  parser.add_argument('--batch-window-ms', type=float, default=2.0,
                      help='how long a batch waits for more requests')
  parser.add_argument('--debug', action='store_true')
  args = parser.parse_args(argv)
  if not 0 <= args.port <= 65535:
    parser.error(f'--port {args.port}: expected 0..65535')
  if args.max_batch < 1 or not 0 <= args.batch_window_ms <= 1000:
    parser.error('--max-batch must be >= 1 and --batch-window-ms in 0..1000')

  from mentor_jax import errors  # pylint: disable=g-import-not-at-top
  import uvicorn  # pylint: disable=g-import-not-at-top

  def run() -> int:
    export = export_lib.load(args.export)
    app = create_app(export, args.index, args.max_batch, args.batch_window_ms)
    m = export.manifest
    print(f'serving {m["display_name"]} ({m["n_users"]} users, '
          f'{m["n_items"]} items, {args.index} index) on '
          f'http://{args.host}:{args.port}', flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level='warning')
    return 0

  return errors.run_cli(run, debug=args.debug)


if __name__ == '__main__':
  sys.exit(main())
