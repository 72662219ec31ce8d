"""Our loss parts on an epoch's first batch at initialization, per seed.

  python bench/reference/first_batch_loss.py --model mmssl --dataset tiktok \
      --seeds 0,1,2

The family's own `loss` (the trainer's batch loss) at the parameters a run
of that seed starts from, on the first batch of its first epoch: what a
reference code logs for its first batch (official_worker.py `--batches 1`,
MMSSL), so that where the first epoch's means differ, the spread of the
starting point over seeds can be seen beside it. (A family whose step does
more than one update, e.g. MMSSL's discriminator step before its generator
loss, logs terms that read the first update: here they read the initial
parameters.)
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
# pylint: disable=g-import-not-at-top
from mentor_jax import datasets
from mentor_jax import epoch as epoch_lib
from mentor_jax.configs import baseline


def first_batch_parts(config) -> dict[str, float]:
  """{part: value} of the family's loss on the first batch of the first
  epoch, at the parameters that step starts from (after the family's
  per-epoch phase, e.g. DiffMM's denoisers, and with its graphs)."""
  data_set = datasets.load_for_config(config)
  family, hp, data, graphdef, rest, state = epoch_lib.setup(config, data_set)
  epoch = epoch_lib.begin_epoch(state, rest, data, graphdef=graphdef,
                                family=family, hp=hp)
  batch = jax.tree.map(lambda x: x[0], epoch.batches)
  _, (parts, _) = family.loss(
      nnx.merge(graphdef, epoch.state.params, rest), data, batch,
      jax.random.fold_in(epoch.steps_key, 0), hp, epoch.aux)
  return {k: float(v) for k, v in parts.items()}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--model', required=True)
  p.add_argument('--dataset', required=True)
  p.add_argument('--seeds', default='0,1,2')
  args = p.parse_args()
  for seed in (int(s) for s in args.seeds.split(',')):
    config = baseline.get_config(f'{args.model},{args.dataset}')
    config.seed = seed
    parts = first_batch_parts(config)
    text = ' + '.join(f'{k} {v:.5g}' for k, v in parts.items())
    print(f'seed {seed}: {sum(parts.values()):.5g} = {text}', flush=True)


if __name__ == '__main__':
  main()
