"""`mentor-study --estimate`: what a study would cost, before it trains.

Per model, a seconds-per-epoch measured on its compiled epoch (the set-up
with the first step, then the steps that fit in about SAMPLE_S, timed in
one call), the compiled program's peak memory (XLA's analysis), and the
hours of training that the study's runs add up to.
"""

from __future__ import annotations

import time
from typing import Any

import ml_collections
import numpy as np

from mentor_jax import console
from mentor_jax import datasets
from mentor_jax import epoch as epoch_lib
from mentor_jax import halving


SAMPLE_S = 3.0  # seconds of steps timed per model, at most about


def estimate(plan: Any, configs: dict[str, ml_collections.ConfigDict],
             typical_epochs: int) -> list[dict[str, Any]]:
  """Per model of `plan` (a study.Plan), trained with `configs[model]`: its
  runs, and s/epoch and peak memory measured on its compiled epoch's first
  steps (nothing is written); hours if every run trains `typical_epochs`
  (or its limit, if lower) and at its limit."""
  rows = []
  for model in plan.models:
    config = configs[model]
    config.seed = plan.seeds[0]
    n_search = len(plan.searched[model]) if len(plan.searched[model]) > 1 else 0
    s = epoch_lib.setup(config, datasets.load_for_config(config))
    compiled = epoch_lib.compile_epoch(s.state, s.rest, s.data,
                                       graphdef=s.graphdef, family=s.family,
                                       hp=s.hp)
    n_steps = epoch_lib.n_steps_of(s.family, s.data, s.hp)

    def timed_steps(epoch, start: int, stop: int):
      t0 = time.perf_counter()
      epoch, marker = compiled.steps(epoch, s.rest, s.data, np.int32(start),
                                     np.int32(stop))
      marker.block_until_ready()
      return epoch, time.perf_counter() - t0

    # The epoch's set-up with its first step; a second step alone for a
    # rough rate; then the steps that fit in about SAMPLE_S in one call, as
    # the trainer runs them (a call per step adds its dispatch to every
    # step: estimates 1.6-2.4x too high on ML-100K's 5 ms steps).
    t0 = time.perf_counter()
    epoch = compiled.begin(s.state, s.rest, s.data)
    epoch, _ = timed_steps(epoch, 0, 1)
    first = time.perf_counter() - t0
    step, done = first, 1
    if n_steps > 1:
      epoch, step = timed_steps(epoch, 1, 2)
      done = 2
    sample = min(n_steps - done, int(SAMPLE_S / max(step, 1e-6)))
    if sample > 1:
      _, seconds = timed_steps(epoch, done, done + sample)
      step = seconds / sample
    seconds = first + (n_steps - 1) * step
    memory = console.peak_memory_bytes(*compiled.programs)
    most = int(config.epochs)
    typical = min(typical_epochs, most)

    def run_epochs(epochs: int) -> float:  # the search's and the seeds'
      if plan.search == 'halving' and n_search:
        search = halving.run_epochs(plan.rung_epochs, n_search, epochs)
      else:
        search = n_search * epochs
      return search + len(plan.seeds) * epochs

    rows.append({'model': model, 'search_runs': n_search,
                 'final_runs': len(plan.seeds), 'epochs_at_most': most,
                 's_per_epoch': seconds, 'compile_s': compiled.compile_s,
                 'peak_gib': memory['peak'] / 2**30 if memory else None,
                 'typical_epochs': typical,
                 'hours_typical': run_epochs(typical) * seconds / 3600,
                 'hours_at_most': run_epochs(most) * seconds / 3600})
  return rows


def format_estimate(rows: list[dict[str, Any]]) -> str:
  lines = ['| model | search runs | final runs | s/epoch | compile s | peak '
           'memory | epochs (limit) | hours at that | hours at the limit |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    peak = f'{r["peak_gib"]:.2f} GiB' if r['peak_gib'] is not None else '?'
    lines.append(f'| {r["model"]} | {r["search_runs"]} | {r["final_runs"]} | '
                 f'{r["s_per_epoch"]:.3g} | {r["compile_s"]:.1f} | {peak} | '
                 f'{r["typical_epochs"]} ({r["epochs_at_most"]}) | '
                 f'{r["hours_typical"]:.3g} | {r["hours_at_most"]:.3g} |')
  typical = sum(r['hours_typical'] for r in rows)
  most = sum(r['hours_at_most'] for r in rows)
  lines.append(f'\nTraining: {typical:.3g} hours if every run stops after '
               f'the epochs given (--estimate-epochs), {most:.3g} hours if '
               'every run goes to its limit; a stack of seeds trains them '
               'at once, usually faster than this sum of runs. Evaluation '
               'and compilation not included.')
  return '\n'.join(lines)
