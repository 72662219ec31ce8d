"""JAX's persistent compilation cache, on by default for training.

Compiling a run's epoch takes seconds to minutes (configs/small.py: 6-13 s
on a quiet 2-core CPU, 36 s on a loaded one); with the cache a rerun, a
resume, a grid cell or a study run of an already compiled program loads it
from disk instead. Where the cache lives, in order:

  config.compile_cache             a folder, 'off' (or ''), or 'auto':
  $MENTOR_JAX_COMPILE_CACHE        a folder, or 'off' (or '', '0');
  JAX's own jax_compilation_cache_dir, if set (e.g. by
                                   $JAX_COMPILATION_CACHE_DIR);
  <$XDG_CACHE_HOME or ~/.cache>/mentor_jax/xla.

Programs that compile in under `MIN_COMPILE_S` are not written (reading
them back would not save time), and the folder is an LRU of at most
`MAX_BYTES`. As JAX warns, the cache is trusted code: do not point it at a
folder others may write to. `CacheStats` tells whether a compile was served
from the cache, for the start-up block.
"""

from __future__ import annotations

import os
import pathlib
import threading
from typing import Any

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

ENV = 'MENTOR_JAX_COMPILE_CACHE'
OFF = ('off', '', '0', 'false', 'none')
MIN_COMPILE_S = 0.5
MAX_BYTES = 4 << 30

_lock = threading.Lock()
_counts = {'hits': 0, 'requests': 0}
_listening = False
# Every compile that consults the cache, and those it served.
_REQUEST = '/jax/compilation_cache/compile_requests_use_cache'
_HIT = '/jax/compilation_cache/cache_hits'


def default_dir() -> pathlib.Path:
  base = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  return pathlib.Path(base) / 'mentor_jax' / 'xla'


def resolve(setting: str = 'auto') -> pathlib.Path | None:
  """The cache folder `setting` (config.compile_cache) asks for, or None."""
  if setting == 'auto':
    env = os.environ.get(ENV)
    if env is not None:
      setting = env
    else:
      current = jax.config.jax_compilation_cache_dir
      return pathlib.Path(current) if current else default_dir()
  if setting.strip().lower() in OFF:
    return None
  return pathlib.Path(setting).expanduser()


def _on_event(event: str, **unused: Any) -> None:
  del unused
  if event in (_HIT, _REQUEST):
    with _lock:
      _counts['hits' if event == _HIT else 'requests'] += 1


def enable(setting: str = 'auto') -> pathlib.Path | None:
  """Points JAX's persistent cache at `resolve(setting)` (None: off).

  Safe to call again with another folder (a test, a second run in one
  process): JAX's cache is reset so that the new folder takes effect.
  """
  global _listening
  path = resolve(setting)
  current = jax.config.jax_compilation_cache_dir
  wanted = None if path is None else str(path)
  if wanted != current:
    if path is not None:
      path.mkdir(parents=True, exist_ok=True)
    jax_cache.set_cache_dir(wanted)
    if current is not None:  # Another folder was in use: forget it.
      jax_cache.reset_cache()
  if path is not None:
    jax.config.update('jax_persistent_cache_min_compile_time_secs',
                      MIN_COMPILE_S)
    jax.config.update('jax_compilation_cache_max_size', MAX_BYTES)
  with _lock:
    if not _listening:
      jax.monitoring.register_event_listener(_on_event)
      _listening = True
  return path


class CacheStats:
  """Compiles that consulted the cache, and its hits, from construction
  until `stop()` (or the end of a `with`)."""

  def __init__(self):
    with _lock:
      self._start = dict(_counts)
    self.hits = self.requests = 0

  def stop(self) -> 'CacheStats':
    with _lock:
      self.hits = _counts['hits'] - self._start['hits']
      self.requests = _counts['requests'] - self._start['requests']
    return self

  def __enter__(self) -> 'CacheStats':
    return self

  def __exit__(self, *exc: Any) -> None:
    self.stop()

  def describe(self) -> str:
    """Where the programs came from, for the start-up block ('' when the
    cache is off)."""
    if not self.requests:
      return ''
    if self.hits == self.requests:
      return 'from the compilation cache'
    if self.hits:
      return (f'{self.hits} of {self.requests} programs from the '
              'compilation cache')
    return 'not in the compilation cache yet'
