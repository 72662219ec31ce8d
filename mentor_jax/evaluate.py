"""Valid and test Recall/NDCG/Precision of a checkpoint (the best epoch).

  python -m mentor_jax.evaluate --workdir runs/small --json-out eval.json
  python -m mentor_jax.evaluate --checkpoint runs/small/checkpoints/best/12
  python -m mentor_jax.evaluate --workdir runs/seeds --run 2   # a stack's run

The model is rebuilt from the config stored in the checkpoint and only the
arrays evaluation needs are restored (no optimizer state), onto this
machine's default device, whatever device layout wrote them.

Which embeddings are ranked follows the run's `eval_embeddings`: for
'last_step' (the official behaviour) the embeddings that were ranked during
training are stored in the best checkpoint and used as they are, so the
numbers equal the logged best-epoch metrics exactly; for 'recompute' they are
recomputed from the restored parameters. `--embeddings` overrides this.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time
from typing import Any, Sequence

from absl import logging as absl_logging
from flax import nnx
import jax
import ml_collections

from data_prep.format import DataError
from mentor_jax import checkpointing
from mentor_jax import data as data_lib
from mentor_jax import datasets
from mentor_jax import epoch as epoch_lib
from mentor_jax import errors
from mentor_jax import metrics as metrics_lib
from mentor_jax import registry
from mentor_jax import rundirs
from mentor_jax import workdir as workdir_lib

KS = (5, 10, 20, 50)


@dataclasses.dataclass
class Restored:
  """A checkpoint step restored for inference."""

  path: pathlib.Path  # the step directory
  meta: dict[str, Any]
  config: ml_collections.ConfigDict
  dataset: data_lib.Dataset
  graphdef: Any
  params: Any
  rest: Any
  scores: tuple[jax.Array, jax.Array] | None  # as ranked during training

  @property
  def epoch(self) -> int:
    return int(self.meta['epoch'])


def _find_npz(config: ml_collections.ConfigDict, meta: dict[str, Any]) -> str:
  # The config's path is relative to where training ran; the absolute path
  # recorded at save time also works from another directory.
  # (datasets.resolve_data_path: $MENTOR_DATA_ROOT, else the cwd.)
  for candidate in (config.data_npz, meta.get('data_npz', '')):
    if candidate and datasets.resolve_data_path(candidate).exists():
      return str(datasets.resolve_data_path(candidate))
  raise DataError(
      f'the dataset of this checkpoint ({config.data_npz}, recorded as '
      f'{meta.get("data_npz")}) was not found; pass --data-npz PATH')


# A trainer may replace the best step while it is read (it deletes the old
# one once the new one is final); reading again takes the new one.
_READ_ATTEMPTS = 5


def load(path: str | pathlib.Path, *, data_npz: str | None = None,
         with_scores: bool = True) -> Restored:
  """Restores params (and the ranked embeddings) of a checkpoint step.

  Safe while training runs in the same workdir: if the step read is
  replaced under it, it reads the newest one again.

  Args:
    path: a training workdir (its best checkpoint), a checkpoint manager
      directory (its newest step) or a step directory.
    data_npz: the dataset .npz; defaults to the one training used. A
      dataset named here may differ in content from training's (same
      shapes), which is then only a warning.
    with_scores: also restore the stored embeddings, if the step has them.

  Raises:
    CheckpointError: no checkpoint, or one that does not fit the dataset.
    DataError: no dataset.
  """
  for attempt in range(_READ_ATTEMPTS):
    directory, step = checkpointing.resolve(path)
    try:
      return _load_step(directory, step, data_npz, with_scores)
    except (errors.UserError, DataError):
      raise
    except Exception as e:  # pylint: disable=broad-except
      # Orbax lists every step of the folder, and the trainer may delete an
      # old one (or the one read) meanwhile: read again. A fault that is
      # still there after a few attempts is real.
      if attempt + 1 == _READ_ATTEMPTS:
        raise damaged_step_error(directory / str(step), e) from e
      time.sleep(0.2 * (attempt + 1))
  raise AssertionError('unreachable')


def damaged_step_error(where: pathlib.Path,
                       error: Exception) -> errors.CheckpointError:
  """The one-line error for a step that cannot be read back."""
  reason = str(error).strip().splitlines()[0] if str(error).strip() else ''
  return checkpointing.DamagedCheckpointError(
      f'{where}: cannot be read back ({type(error).__name__}'
      + (f': {reason[:200]}' if reason else '') + '); the files are damaged '
      'or incomplete. Evaluate the newest latest step instead (--checkpoint '
      'WORKDIR/checkpoints/latest), or train again to write a new best one')


def _load_step(directory: pathlib.Path, step: int, data_npz: str | None,
               with_scores: bool) -> Restored:
  # Orbax warns "Given directory is read only" for what was asked for.
  quiet = lambda r: not r.getMessage().startswith('Given directory is read')
  absl_logging.get_absl_logger().addFilter(quiet)
  try:
    manager = checkpointing.read_only_manager(directory)
  finally:
    absl_logging.get_absl_logger().removeFilter(quiet)
  meta = checkpointing.read_meta(manager, step)
  if 'stack' in meta:
    raise checkpointing.CheckpointMismatchError(
        f'{directory / str(step)} holds the stacked state of '
        f'{len(meta["stack"])} runs (for resuming); evaluate one run with '
        '--workdir WORKDIR --run K, which reads its best checkpoint.')
  config = ml_collections.ConfigDict(meta['config'])
  config.data_npz = data_npz or _find_npz(config, meta)
  dataset = data_lib.load_dataset(config.data_npz)
  family = registry.get(config.model)
  graphdef, params, rest = nnx.split(family.create_model(config, dataset),
                                     nnx.Param, ...)
  where = directory / str(step)
  checkpointing.check_signature(
      meta['signature'],
      checkpointing.signature(config.model, dataset, params), where,
      allow_other_data=data_npz is not None)
  # Explicit single-device targets: the writer's shardings may name devices
  # this machine does not have.
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype,
                                                   sharding=device)
  items = {'params': jax.tree.map(lambda x: spec(x.shape, x.dtype), params)}
  if with_scores and 'scores' in meta:
    items['scores'] = {name: spec(tuple(s['shape']), s['dtype'])
                       for name, s in meta['scores'].items()}
  out = checkpointing.restore_items(manager, step, **items)
  manager.close()
  scores = out.get('scores')
  return Restored(where, meta, config, dataset, graphdef, out['params'], rest,
                  None if scores is None else (scores['user'], scores['item']))


def embeddings(restored: Restored, mode: str = 'auto'
               ) -> tuple[tuple[jax.Array, jax.Array], str]:
  """((user, item) embeddings to rank, the mode used).

  Args:
    restored: from `load`.
    mode: 'saved' (the stored ones), 'recompute' (from the params) or
      'auto' (saved for eval_embeddings='last_step', else recompute).
  """
  if mode == 'auto':
    mode = ('saved' if restored.config.eval_embeddings == 'last_step'
            else 'recompute')
  if mode == 'saved':
    if restored.scores is None:
      raise errors.CheckpointError(
          f'{restored.path} stores no embeddings (only best checkpoints '
          'do); use --embeddings recompute')
    return restored.scores, mode
  if mode != 'recompute':
    raise errors.ConfigError(f'embeddings mode {mode!r}: expected auto, '
                             'saved or recompute')
  config, dataset = restored.config, restored.dataset
  family = registry.get(config.model)
  # The same static settings as training, hence the same compiled scorer.
  hp = epoch_lib.make_hparams(family, config, dataset)
  data = data_lib.to_device(dataset, config.knn_k)
  scores = epoch_lib.clean_scores(restored.params, restored.rest, data,
                                  graphdef=restored.graphdef, family=family,
                                  hp=hp)
  return scores, mode


def evaluate(restored: Restored, mode: str = 'auto',
             ks: Sequence[int] = KS) -> dict[str, Any]:
  """{'checkpoint', 'epoch', 'embeddings', 'valid', 'test'} metrics."""
  (user, item), mode = embeddings(restored, mode)
  # Training's cut-offs as well, so that every logged number is reproduced.
  ks = tuple(sorted(set(ks) | set(restored.config.topk)))
  # One ranking pass for both splits, as the trainer's Evaluator does.
  result = metrics_lib.evaluate_splits(
      user, item, {s: restored.dataset.split(s) for s in ('valid', 'test')},
      *restored.dataset.split('train'), ks=ks,
      chunk_size=int(restored.config.eval_batch_size))
  return {'checkpoint': str(restored.path), 'epoch': restored.epoch,
          'embeddings': mode, **result}


def format_table(result: dict[str, Any]) -> str:
  rows = [f'{"metric":<14}{"valid":>10}{"test":>10}']
  for name in result['valid']:
    rows.append(f'{name:<14}{result["valid"][name]:>10.4f}'
                f'{result["test"][name]:>10.4f}')
  return '\n'.join(rows)


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
  where = parser.add_mutually_exclusive_group(required=True)
  where.add_argument('--workdir', help='training workdir: its best checkpoint')
  where.add_argument('--checkpoint', help='a checkpoint manager or step dir')
  parser.add_argument('--run', type=int,
                      help='run K of a stacked workdir (config.seeds / '
                      'config.sweep): its best checkpoint')
  parser.add_argument('--data-npz', help='dataset .npz (default: training\'s)')
  parser.add_argument('--embeddings', default='auto',
                      choices=('auto', 'saved', 'recompute'))
  parser.add_argument('--overwrite', action='store_true',
                      help='replace an existing output file')
  parser.add_argument('--debug', action='store_true',
                      help='show the traceback of an error')


def checkpoint_path(args: argparse.Namespace) -> pathlib.Path:
  """What --workdir / --checkpoint and --run name."""
  if args.checkpoint:
    if args.run is not None:
      raise errors.ConfigError('--run goes with --workdir, not --checkpoint')
    return pathlib.Path(args.checkpoint)
  return rundirs.run_dir(args.workdir, args.run)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add_checkpoint_args(parser)
  parser.add_argument('--json-out', help='also write the metrics as JSON')
  args = parser.parse_args(argv)

  def run() -> int:
    if args.json_out:
      workdir_lib.check_output(args.json_out, overwrite=args.overwrite)
    restored = load(checkpoint_path(args), data_npz=args.data_npz,
                    with_scores=args.embeddings != 'recompute')
    result = evaluate(restored, args.embeddings)
    print(f'{result["checkpoint"]} (epoch {result["epoch"]}, '
          f'{result["embeddings"]} embeddings)')
    print(format_table(result))
    text = json.dumps(result, indent=2)
    if args.json_out:
      workdir_lib.write_output(args.json_out, text + '\n',
                               overwrite=args.overwrite)
    else:
      print(text)
    return 0

  return errors.run_cli(run, debug=args.debug)


if __name__ == '__main__':
  sys.exit(main())
