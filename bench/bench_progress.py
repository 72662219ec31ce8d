"""Usage: python bench/bench_progress.py STEPS REPS [BABY_NPZ]

Progress-bar overhead: Baby-shape epoch program with and without the
per-step callback (interleaved A/B), plus the callback's own cost."""
import sys, time, json
import numpy as np
import jax, jax.numpy as jnp
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[1]))
from configs import synth_baby
from mentor_jax import datasets, progress, train
from mentor_jax import epoch as epoch_lib

STEPS, REPS = int(sys.argv[1]), int(sys.argv[2])
config = synth_baby.get_config()
config.data_npz = sys.argv[3] if len(sys.argv) > 3 else 'data/synth_baby.npz'
dataset = datasets.load_for_config(config)
family, hp, data, graphdef, rest, state = epoch_lib.setup(config, dataset)
rng = np.random.default_rng(0)
rows = np.sort(rng.choice(dataset.n_train, STEPS * hp.batch_size, replace=False))
data = data._replace(train_user=data.train_user[rows], train_item=data.train_item[rows])
kw = dict(graphdef=graphdef, family=family, hp=hp)
progs = {}
for flag in (True, False):
  t = time.perf_counter()
  progs[flag] = epoch_lib.train_epoch.lower(state, rest, data, progress=flag, **kw).compile()
  print('compiled', flag, round(time.perf_counter() - t, 1), flush=True)
epoch_lib.release_freed_host_memory()
bar = progress.EpochProgress(STEPS, 100, stream=open('/dev/null', 'w'), tty=True)
states = {f: jax.tree.map(lambda x: x.copy(), state) for f in (True, False)}
times = {True: [], False: []}
with bar:
  for rep in range(REPS + 1):
    for flag in ((True, False) if rep % 2 else (False, True)):
      bar.start(rep)
      t = time.perf_counter()
      states[flag], parts, _ = progs[flag](states[flag], rest, data)
      jax.block_until_ready(parts)
      dt = time.perf_counter() - t
      bar.finish(dt)
      if rep:  # rep 0: warm-up
        times[flag].append(dt / STEPS)
      print(rep, flag, round(dt / STEPS, 4), flush=True)
med = {f: float(np.median(v)) for f, v in times.items()}
print(json.dumps({'step_s_with': med[True], 'step_s_without': med[False],
                  'overhead_pct': 100 * (med[True] / med[False] - 1),
                  'with': times[True], 'without': times[False]}))

# The callback's own cost: a scan of near-empty steps, with and without it.
def f(x, report):
  def body(c, i):
    if report:
      progress.report_step(i)
    return c + 1.0, None
  return jax.lax.scan(body, x, jnp.arange(20000))[0]
for report in (False, True):
  g = jax.jit(lambda x: f(x, report)).lower(jnp.zeros(())).compile()
  g(jnp.zeros(())).block_until_ready()
  best = min((lambda t: (g(jnp.zeros(())).block_until_ready(), time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(3))
  print('scan 20000 steps, callback', report, 'us/step', round(best / 20000 * 1e6, 2))
