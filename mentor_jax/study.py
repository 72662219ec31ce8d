"""The paper's experiment as one command: each model's search, its seeds, the
tables and figures.

  mentor-study --config tiktok --models mentor,lightgcn,freedom \
      --seeds 0,1,2 --search random --cells 4 --workdir studies/tiktok
  mentor-study --config tiny --workdir studies/tiny --estimate
  mentor-study ... --config.epochs=100     # any config key, every model

For a dataset config (`configs/<name>.py`, which takes the model as its
argument) and each model (default: every registered one):
1. the search: the cells of the model's grid (`config.grid`: MMRec's yaml
   grid, or the official code's, MENTOR's included), all of them
   (`--search grid`) or a seeded sample of `--cells` (`--search random`),
   each trained with the first seed in `<workdir>/<model>/search/<cell>`;
   or that sample as stacks whose worse half is frozen after
   `--rung-epochs`, twice that, ... (`--search halving`, halving.py);
2. selection on validation (`config.valid_metric` at each cell's best
   epoch); the cell a test-selected runner (MMRec's quick_start) would have
   picked is recorded beside it;
3. the selected cell with every seed, as one stack, in
   `<workdir>/<model>/final`;
4. the tables and figures (study_tables.py) in `<workdir>/tables`.

Interrupted (Ctrl-C, SIGTERM, a crash), the same command resumes: finished
trainings are read back, the stopped one resumes from its checkpoint. The
plan (models, seeds, search, sampled cells, overrides) is written to
`<workdir>/study.json` by the first run; a later run with other settings is
refused. `--estimate` prints the runs, a seconds-per-epoch measured from one
compiled epoch segment of each model, its peak memory (XLA's analysis) and
the expected total time, and trains nothing.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import json
import pathlib
import sys
import zlib
from typing import Any, Callable, Sequence

from absl import logging
import ml_collections
import numpy as np

from mentor_jax import console
from mentor_jax import errors
from mentor_jax import grid as grid_lib
from mentor_jax import halving
from mentor_jax import main as main_lib
from mentor_jax import registry
from mentor_jax import study_estimate
from mentor_jax import train
from mentor_jax import workdir as workdir_lib
from mentor_jax.configs import paper

SEARCHES = ('grid', 'random', 'halving')
ABLATION_VARIANTS = ('mentor_f', 'mentor_g', 'mentor_fg', 'mentor_base',
                     'mentor_l1', 'mentor_l2')
PLAN_FILE = 'study.json'


@dataclasses.dataclass
class Plan:
  """What a study runs; `<workdir>/study.json` holds it."""

  config: str
  models: list[str]
  seeds: list[int]
  search: str
  cells: int
  overrides: dict[str, Any]
  # MENTOR's ablation variants (configs/ablation.py) with its selected cell.
  ablation: bool = False
  # Per model: the grid cells searched (the sample, for random / halving).
  searched: dict[str, list[dict[str, Any]]] = dataclasses.field(
      default_factory=dict)
  # --search halving: the first rung's epochs (halving.py).
  rung_epochs: int = 10
  # MENTOR searched over the paper's grid (configs/paper.py GRID), not
  # the official code's.
  paper_grid: bool = False


def load_dataset_config(name: str, model: str) -> ml_collections.ConfigDict:
  """`configs/<name>.py`'s get_config(model): a path or a shipped name."""
  path = pathlib.Path(name)
  if not path.is_file():
    path = main_lib.shipped_config(name)
    if path is None:
      raise errors.ConfigError(f'--config {name}: no such file, and no '
                               'shipped config of that name (tiny, small, '
                               'baby, tiktok, ...)')
  spec = importlib.util.spec_from_file_location(f'_study_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  try:
    return module.get_config(model)
  except TypeError as e:
    raise errors.ConfigError(f'--config {name}: its get_config does not take '
                             f'a model ({e}); name a dataset config') from e


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy with `overrides`, each typed like the config's own value."""
  out = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    if key not in out:
      raise errors.ConfigError(f'--config.{key}: not a key of the '
                               f'{config.model} config')
    out[key] = value
  return out


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
  """['--config.epochs=5', ...] -> {'epochs': 5} (Python literals, else
  text)."""
  out = {}
  for item in items:
    key, sep, raw = item.removeprefix('--config.').partition('=')
    if not item.startswith('--config.') or not sep or not key:
      raise errors.ConfigError(f'{item}: expected --config.KEY=VALUE')
    try:
      out[key] = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      out[key] = raw
  return out


def search_cells(config: ml_collections.ConfigDict, search: str, n: int,
                 model: str) -> list[dict[str, Any]]:
  """The cells of the model's grid to train: all, or a seeded sample.

  The sample depends only on the model's name and the grid, so the same
  study samples the same cells on any machine.
  """
  every = grid_lib.cells(grid_lib.config_grid(config))
  if search == 'grid' or n >= len(every):
    return every
  rng = np.random.default_rng(zlib.crc32(model.encode()))
  return [every[i] for i in sorted(rng.choice(len(every), n, replace=False))]


def make_plan(args: argparse.Namespace, overrides: dict[str, Any]) -> Plan:
  models = (args.models.split(',') if args.models else registry.names())
  unknown = [m for m in models if m not in registry.names()]
  if unknown:
    raise errors.ConfigError(f'--models: unknown {unknown}; the models are '
                             f'{registry.names()}')
  try:
    seeds = [int(s) for s in args.seeds.split(',')]
  except ValueError as e:
    raise errors.ConfigError(f'--seeds {args.seeds}: expected integers such '
                             'as 0,1,2') from e
  if len(set(seeds)) != len(seeds) or not seeds:
    raise errors.ConfigError(f'--seeds {args.seeds}: expected distinct seeds')
  if (args.ablation or args.paper_grid) and 'mentor' not in models:
    raise errors.ConfigError('--ablation and --paper-grid are about '
                             'MENTOR: add mentor to --models')
  plan = Plan(args.config, models, seeds, args.search, args.cells, overrides,
              args.ablation, rung_epochs=args.rung_epochs,
              paper_grid=args.paper_grid)
  for model in models:
    config = apply_overrides(load_dataset_config(args.config, model),
                             overrides)
    if args.paper_grid and model == 'mentor':
      config.grid = paper.GRID
    plan.searched[model] = search_cells(config, args.search, args.cells,
                                        model)
  return plan


def check_plan(workdir: pathlib.Path, plan: Plan) -> None:
  """Writes the plan, or refuses one that differs from the stored one."""
  path = workdir / PLAN_FILE
  mine = json.loads(json.dumps(dataclasses.asdict(plan), default=str))
  if path.exists():
    stored = json.loads(path.read_text())
    # A plan stored before a field existed has that field's default.
    for field in dataclasses.fields(Plan):
      if field.default is not dataclasses.MISSING:
        stored.setdefault(field.name, field.default)
    if stored != mine:
      diff = sorted(k for k in mine if stored.get(k) != mine[k])
      raise errors.ConfigError(
          f'{path} holds a study with other settings ({", ".join(diff)}); '
          'rerun it with the same arguments to resume, or use another '
          '--workdir')
    return
  workdir.mkdir(parents=True, exist_ok=True)
  workdir_lib.write_json_atomic(path, mine)


def model_config(plan: Plan, model: str) -> ml_collections.ConfigDict:
  return apply_overrides(load_dataset_config(plan.config, model),
                         plan.overrides)


def with_seeds(job: ml_collections.ConfigDict,
               seeds: list[int]) -> ml_collections.ConfigDict:
  """`job` trained with every seed: one stack, or one run for one seed."""
  if len(seeds) > 1:
    job.seeds = tuple(seeds)
  else:
    job.seed = seeds[0]
  return job


def run_model(plan: Plan, model: str, workdir: pathlib.Path,
              train_fn: Callable[..., dict[str, Any]]) -> dict[str, Any]:
  """Search, selection and the seeds of one model.

  Returns:
    {'selected', 'selected_by_test', 'search': rows, 'final': result}, or
    {'interrupted': signal name} when a training was stopped.
  """
  config = model_config(plan, model)
  metric = config.valid_metric
  rows = []
  cells = plan.searched[model]
  if len(cells) > 1 and plan.search == 'halving':
    logging.info('study: %s, successive halving of %d cells', model,
                 len(cells))
    found = halving.search(config, cells, plan.seeds[0], plan.rung_epochs,
                           workdir / model / 'search', train_fn)
    if 'interrupted' in found:
      return found
    rows = found['rows']
  elif len(cells) > 1:
    for i, cell in enumerate(cells):
      logging.info('study: %s, search cell %d/%d: %s', model, i + 1,
                   len(cells), grid_lib.cell_name(cell))
      job = grid_lib.with_values(config, cell)
      job.seed = plan.seeds[0]
      try:
        result = train_fn(job, workdir / model / 'search' /
                          grid_lib.cell_name(cell))
      except errors.TrainingDivergedError as e:
        # A cell that diverges is not selected; the others still count.
        rows.append({'cell': cell, 'diverged': str(e), 'valid': {},
                     'test': {}})
        continue
      if 'interrupted' in result:
        return result
      rows.append({'cell': cell, 'best_epoch': result['best_epoch'],
                   'valid': result['valid'], 'test': result['test']})
  if rows:
    best, by_test = grid_lib.select(rows, metric, f"{model}'s search")
    selected, selected_by_test = cells[best], cells[by_test]
  else:
    selected = selected_by_test = cells[0] if cells else {}
  logging.info('study: %s, seeds %s of %s', model, plan.seeds,
               grid_lib.cell_name(selected))
  job = with_seeds(grid_lib.with_values(config, selected), plan.seeds)
  final = train_fn(job, workdir / model / 'final')
  if 'interrupted' in final:
    return final
  return {'selected': selected, 'selected_by_test': selected_by_test,
          'valid_metric': metric, 'search': rows, 'final': final}


def run_ablation(plan: Plan, selected: dict[str, Any], workdir: pathlib.Path,
                 train_fn: Callable[..., dict[str, Any]]) -> dict[str, Any]:
  """MENTOR's variants (Table 2's _f, _g, _fg rows; Fig. 3's base, L1, L2),
  each MENTOR's selected cell with every seed, in
  `<workdir>/mentor/ablation/<variant>`."""
  from mentor_jax.configs import ablation  # pylint: disable=g-import-not-at-top
  out = {}
  for variant in ABLATION_VARIANTS:
    logging.info('study: mentor, ablation %s', variant)
    job = with_seeds(ablation.apply_variant(
        grid_lib.with_values(model_config(plan, 'mentor'), selected),
        variant), plan.seeds)
    result = train_fn(job, workdir / 'mentor' / 'ablation' / variant)
    if 'interrupted' in result:
      return result
    out[variant] = result
  return out


def run_study(plan: Plan, workdir: str | pathlib.Path,
              train_fn: Callable[..., dict[str, Any]] | None = None,
              reference: str | None = None) -> dict[str, Any]:
  """Every model of `plan`, then the tables; resumable (module docstring).

  Returns:
    {'models': {model: run_model's result}} and the tables' paths, or
    {'interrupted': signal name, 'model': model}. `reference`: the model
    the tables compare the others with (default MENTOR, if studied).
  """
  from mentor_jax import study_tables  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  train_fn = train_fn or train.train_and_evaluate
  for model in plan.models:  # every config checked before anything trains
    train.check_config(model_config(plan, model))
  check_plan(workdir, plan)
  out = {}
  for model in plan.models:
    result = run_model(plan, model, workdir, train_fn)
    if 'interrupted' in result:
      return {'interrupted': result['interrupted'], 'model': model}
    out[model] = result
  if plan.ablation:
    variants = run_ablation(plan, out['mentor']['selected'], workdir,
                            train_fn)
    if 'interrupted' in variants:
      return {'interrupted': variants['interrupted'], 'model': 'mentor'}
  summary = {'plan': dataclasses.asdict(plan), 'models': out}
  if reference is None and 'mentor' in plan.models:
    reference = 'mentor'
  summary['tables'] = study_tables.write_all(
      workdir, out, reference,
      ABLATION_VARIANTS if plan.ablation else ())
  workdir_lib.write_text_atomic(workdir / 'study_summary.json',
                                json.dumps(summary, indent=2, default=str))
  return summary


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n')[0],
      epilog='Any --config.KEY=VALUE applies to every model.')
  parser.add_argument('--config', required=True,
                      help='a dataset config (tiny, tiktok, baby, a file)')
  parser.add_argument('--models', help='comma-separated (default: all)')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--search', choices=SEARCHES, default='random')
  parser.add_argument('--cells', type=int, default=8,
                      help='cells sampled per model (--search random, '
                      'halving)')
  parser.add_argument('--rung-epochs', type=int, default=10,
                      help='--search halving: epochs before the first '
                      'halving (then twice that, ...; default 10)')
  parser.add_argument('--workdir', required=True, type=pathlib.Path)
  parser.add_argument('--reference',
                      help='the model Table 2 tests the others against '
                      '(default: mentor, when it is in --models)')
  parser.add_argument('--ablation', action='store_true',
                      help='also MENTOR\'s variants with its selected '
                      'setting: Table 2\'s _f/_g/_fg rows and Fig. 3')
  parser.add_argument('--paper-grid', action='store_true',
                      help='search MENTOR over the paper\'s grid (p, '
                      'lambda_f, lambda_g, tau, lambda_align: 2,520 cells, '
                      'sampled by --cells) for Figs. 5 and 7')
  parser.add_argument('--estimate', action='store_true',
                      help='print the cost of the study; train nothing')
  parser.add_argument('--estimate-epochs', type=int, default=150,
                      help='epochs a run is expected to train before its '
                      'early stop, for --estimate (default 150)')
  parser.add_argument('--debug', action='store_true')
  args, rest = parser.parse_known_args(argv)
  if args.cells < 1:
    parser.error(f'--cells {args.cells}: expected >= 1')
  if args.rung_epochs < 1:
    parser.error(f'--rung-epochs {args.rung_epochs}: expected >= 1')
  bad = [a for a in rest if not a.startswith('--config.')]
  if bad:
    parser.error(f'unrecognized arguments: {" ".join(bad)}')

  # The trainings' epoch lines, as mentor-train prints them.
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  console.setup_logging()
  console.quiet_orbax_logs()

  def run() -> int:
    plan = make_plan(args, parse_overrides(rest))
    if args.estimate:
      configs = {m: model_config(plan, m) for m in plan.models}
      print(study_estimate.format_estimate(
          study_estimate.estimate(plan, configs, args.estimate_epochs)))
      return 0
    if args.reference and args.reference not in plan.models:
      raise errors.ConfigError(f'--reference {args.reference}: not one of '
                               f'--models {plan.models}')
    result = run_study(plan, args.workdir, reference=args.reference)
    if 'interrupted' in result:
      print(f'stopped by {result["interrupted"]} in {result["model"]}; run '
            'the same command again to resume', file=sys.stderr)
      return 130 if result['interrupted'] == 'SIGINT' else 143
    for name, path in result['tables'].items():
      print(f'{name}: {path}')
    return 0

  return errors.run_cli(run, debug=args.debug)


if __name__ == '__main__':
  sys.exit(main())
