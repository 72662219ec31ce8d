"""A model's compiled epoch on a dataset: XLA's peak buffer bytes and the
process's peak RSS, nothing run (for epochs too long to run on a CPU).

  python bench/compile_memory.py MODEL DATASET_CONFIG NPZ
  python bench/compile_memory.py diffmm synth_clothing /work/bench_data/synth_clothing.npz

XLA's peak (console.peak_memory_bytes) is every buffer of the epoch's
larger program live at once: arguments + outputs - donated + temporaries.
"""
import importlib
import pathlib
import resource
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# pylint: disable=g-import-not-at-top
from mentor_jax import console
from mentor_jax import datasets
from mentor_jax import epoch as epoch_lib

model, dataset, npz = sys.argv[1:4]
config = importlib.import_module(f'mentor_jax.configs.{dataset}').get_config(
    model)
config.data_npz = npz
t0 = time.time()
s = epoch_lib.setup(config, datasets.load_for_config(config))
compiled = epoch_lib.compile_epoch(s.state, s.rest, s.data,
                                   graphdef=s.graphdef, family=s.family,
                                   hp=s.hp)
mem = console.peak_memory_bytes(*compiled.programs)
gib = lambda n: f'{n / 2**30:.2f} GiB'
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(f'{model}: {epoch_lib.n_steps_of(s.family, s.data, s.hp)} steps, '
      f'compile {compiled.compile_s:.1f} s, XLA peak {gib(mem["peak"])} '
      f'(arguments {gib(mem["argument"])}, temporaries {gib(mem["temp"])}), '
      f'process peak RSS {gib(rss)}, {time.time() - t0:.0f} s')
