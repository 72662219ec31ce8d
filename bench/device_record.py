"""Records bench/device_suite.sh's measurements and summarizes them.

Standard library only, so that it runs under any Python the suite meets.

  python bench/device_record.py probe --ref-python P > env.json
  python bench/device_record.py add --jsonl M --step S --kind K --rc 0 ...
  python bench/device_record.py skip --jsonl M --step S --kind K --reason R
  python bench/device_record.py summary --jsonl M --out summary.md

Every measurement is one line of `measurements.jsonl`:

  {"step", "kind", "status": "ok" | "failed" | "skipped", "reason",
   "rc", "wall_s", "timeout_s", "mode": "device" | "smoke", "meta": {...},
   "metrics": {...}, "raw": <the step's own JSON output>}

`metrics` holds the numbers the summary uses (seconds, GiB, TFLOP/s), all
finite numbers or null; non-finite values are written as null so that every
line is strict JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
from typing import Any

GIB = float(1 << 30)
# NVIDIA's H200 SXM datasheet rates (dense), the yardsticks; the
# matmul step measures what this card gives.
H200_PEAK_TFLOPS = {'float32': 67.0, 'tf32': 494.0, 'bf16': 989.0}
# The targets (full MENTOR, Clothing shape, on the H200).
TARGETS = {
    'fp32_fraction_of_peak': 0.70,
    'tf32_bf16_epoch_s': 1.0,
    'peak_device_gb': 3.0,
    'eval_s': 0.050,
    'matched_float32_speedup': 2.0,
    'tf32_vs_official_default_speedup': 5.0,
    'memory_ratio': 4.0,
}


def _clean(x: Any) -> Any:
  """Non-finite floats -> None, recursively (strict JSON)."""
  if isinstance(x, float):
    return x if math.isfinite(x) else None
  if isinstance(x, dict):
    return {str(k): _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  return x


def _load(path: str | None) -> Any:
  if not path or not os.path.isfile(path):
    return None
  text = pathlib.Path(path).read_text()
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return None


def _median(s: Any) -> float | None:
  return s.get('median') if isinstance(s, dict) else None


def model_flops_per_step(n_users: int, n_items: int, dim_v: int, dim_t: int,
                         *, embed: int = 64, hidden: int = 256,
                         nce_dim: int = 128) -> float:
  """Dense FLOPs of one full-MENTOR training step (MENTOR_SPEC §7's model).

  Three encoders per modality (the plain one and two noise ones) run an MLP
  dim -> hidden -> embed over every item, forward and backward (weight
  gradients only for the first layer: its input is a constant); the ID MLP
  once; the user and item InfoNCE are U x U and I x I products of nce_dim,
  backward twice the forward. Sparse propagation and the rest (< 0.1 %)
  are left out. Clothing (39,387 / 23,033, 4096 / 384): about 1.94e12.
  """
  def mlp(rows, d_in, copies):
    fwd = 2 * rows * (d_in * hidden + hidden * embed) * copies
    bwd = 2 * rows * (d_in * hidden + 2 * hidden * embed) * copies
    return fwd + bwd
  items = mlp(n_items, dim_v, 3) + mlp(n_items, dim_t, 3)
  items += 3 * 2 * n_items * (embed * hidden + hidden * embed)
  nce = 3 * 2 * (n_users ** 2 + n_items ** 2) * nce_dim
  return float(items + nce)


# --- extraction: the step's own JSON -> metrics ---------------------------


def extract_bench_train(payload: Any, meta: dict[str, Any]
                        ) -> tuple[dict[str, Any], str | None]:
  """bench_train.py's JSON (one variant) -> (metrics, error)."""
  if not payload or not payload.get('results'):
    return {}, 'no results in the JSON'
  r = payload['results'][0]
  if 'error' in r:
    return {}, r['error'][-2000:]
  spec = r.get('spec') or {}
  epoch = r.get('epoch_s')
  m: dict[str, Any] = {
      'variant': r.get('variant'),
      'precision': (spec.get('overrides') or {}).get('matmul_precision',
                                                     'float32'),
      'overrides': spec.get('overrides') or {},
      'n_users': r.get('n_users'), 'n_items': r.get('n_items'),
      'n_train': r.get('n_train'), 'steps_per_epoch': r.get('full_epoch_steps'),
      'spmm_kernel': r.get('spmm_kernel'),
      'infonce_impl': r.get('infonce_impl'),
      'epoch_s': _median(epoch),
      'epoch_s_stats': epoch,
      'epoch_s_extrapolated': r.get('epoch_s_extrapolated'),
      'first_epoch_s': r.get('first_program_s'),
      'step_s': _median(r.get('step_s')),
      'compile_s': r.get('compile_s'), 'setup_s': r.get('setup_s'),
      'eval_s': _median(r.get('eval_s')), 'eval_s_stats': r.get('eval_s'),
      'eval_first_s': r.get('eval_first_s'),
      'device_peak_gib': r.get('device_peak_gib'),
      'peak_rss_gib': r.get('peak_rss_gib'),
      'xla_temp_gib': (r.get('xla_memory_gib') or {}).get('temp'),
      'losses_finite': r.get('losses_finite'),
      'valid_recall@10': r.get('valid_recall@10'),
      'backend': (r.get('env') or {}).get('backend'),
      'device_kind': (r.get('env') or {}).get('device_kind'),
  }
  dims = (meta.get('dim_v'), meta.get('dim_t'))
  if m['step_s'] and m['n_users'] and all(dims) and m['variant'] == 'full':
    flops = model_flops_per_step(int(m['n_users']), int(m['n_items']),
                                 int(dims[0]), int(dims[1]))
    m['model_flops_per_step'] = flops
    m['model_tflops'] = flops / m['step_s'] / 1e12
  if m['losses_finite'] is False:
    return m, 'non-finite training loss'
  return m, None


def extract_reference(payload: Any, meta: dict[str, Any]
                      ) -> tuple[dict[str, Any], str | None]:
  """run_reference.py's JSON (one round, official only) -> (metrics, error)."""
  del meta
  if not payload or not payload.get('runs'):
    return {}, 'no runs in the JSON'
  r = payload['runs'][0].get('official') or {}
  if 'error' in r:
    return {}, r['error'][-2000:]
  m = {
      'impl': 'official', 'device': r.get('device'),
      'cuda_device': r.get('cuda_device'),
      'n_users': r.get('n_users'), 'n_items': r.get('n_items'),
      'n_train': r.get('n_train'),
      'steps_per_epoch': r.get('batches_per_epoch'),
      'epoch_s': _median(r.get('epoch_s')), 'epoch_s_stats': r.get('epoch_s'),
      'epoch_times_s': r.get('epoch_times_s'),
      'epoch_s_extrapolated': r.get('epoch_s_extrapolated'),
      'step_s': _median(r.get('batch_s')),
      'setup_s': r.get('setup_s'), 'pre_epoch_s': r.get('pre_epoch_s'),
      'eval_s': _median(r.get('eval_s')), 'eval_s_stats': r.get('eval_s'),
      'eval_first_s': r.get('eval_first_s'),
      'device_peak_gib': r.get('torch_cuda_peak_allocated_gib'),
      'device_reserved_gib': r.get('torch_cuda_peak_reserved_gib'),
      'peak_rss_gib': r.get('peak_rss_gib'),
      'float32_matmul_precision': r.get('float32_matmul_precision'),
      'cuda_matmul_allow_tf32': r.get('cuda_matmul_allow_tf32'),
      'epochs_note': r.get('epochs_note'),
      'valid_recall@10': r.get('valid_recall@10'),
      'torch': (r.get('env') or {}).get('torch'),
  }
  if m['epoch_s'] is None and m['epoch_s_extrapolated'] is None:
    return m, 'neither whole epochs nor batches were timed'
  return m, None


def extract_matmul(payload: Any, meta: dict[str, Any]
                   ) -> tuple[dict[str, Any], str | None]:
  """bench_matmul.py's JSON -> per item count, ms and TFLOP/s per product."""
  del meta
  if not payload or not payload.get('results'):
    return {}, 'no results in the JSON'
  rows = []
  for r in payload['results']:
    stats = r.get('stats') or {}
    row = {'n_items': r.get('n_items'), 'gflop_per_product': r.get('gflop')}
    for name, s in stats.items():
      med = _median(s)
      row[f'{name}_ms'] = None if med is None else med * 1e3
      # fwd_bwd_<mode>: the product and its weight gradient, 2 products.
      n_products = 2 if name.startswith('fwd_bwd_') else 1
      if med:
        row[f'{name}_tflops'] = n_products * r['gflop'] / med / 1e3
    rows.append(row)
  return {'rows': rows}, None


def extract_train_cli(workdir: str | None, meta: dict[str, Any]
                      ) -> tuple[dict[str, Any], str | None]:
  """A `python -m mentor_jax.train` workdir -> result and epoch times."""
  del meta
  if not workdir:
    return {}, 'no workdir'
  wd = pathlib.Path(workdir)
  result = _load(str(wd / 'result.json'))
  epochs = []
  path = wd / 'metrics.jsonl'
  if path.is_file():
    for line in path.read_text().splitlines():
      try:
        epochs.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  if result is None:
    return {'epochs_logged': len(epochs)}, f'no result.json in {wd}'
  train_t = [e['train_time_s'] for e in epochs if 'train_time_s' in e]
  eval_t = [e['eval_time_s'] for e in epochs if 'eval_time_s' in e]
  m: dict[str, Any] = {
      'best_epoch': result.get('best_epoch'),
      'epochs_run': result.get('epochs_run'),
      'valid': result.get('valid'), 'test': result.get('test'),
      'epochs_logged': len(epochs),
      # Epoch 0 includes the compile; the rest are the steady state.
      'first_epoch_s': train_t[0] if train_t else None,
      'epoch_s': statistics.median(train_t[1:]) if len(train_t) > 1 else None,
      'eval_s': statistics.median(eval_t[1:]) if len(eval_t) > 1 else None,
      'valid_per_epoch': [(e.get('valid') or {}).get('recall@20')
                          for e in epochs],
      'test_per_epoch': [(e.get('test') or {}).get('recall@20')
                         for e in epochs],
      'final_loss': (sum(epochs[-1]['loss'].values())
                     if epochs and isinstance(epochs[-1].get('loss'), dict)
                     else None),
  }
  return m, None


def extract_passthrough(payload: Any, meta: dict[str, Any]
                        ) -> tuple[dict[str, Any], str | None]:
  del meta
  return (payload if isinstance(payload, dict) else {}), None


EXTRACTORS = {
    'bench_train': extract_bench_train,
    'reference': extract_reference,
    'matmul': extract_matmul,
    'env': extract_passthrough,
    'plain': extract_passthrough,
}


def _tail(path: str | None, n: int = 3000) -> str:
  if not path or not os.path.isfile(path):
    return ''
  with open(path, 'rb') as f:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - n))
    return f.read().decode('utf-8', 'replace')


def _meta(items: list[str]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for item in items:
    key, _, raw = item.partition('=')
    try:
      out[key] = json.loads(raw)
    except json.JSONDecodeError:
      out[key] = raw
  return out


def _append(jsonl: str, line: dict[str, Any]) -> None:
  line = dict(line, recorded_utc=datetime.datetime.now(
      datetime.timezone.utc).isoformat(timespec='seconds'))
  text = json.dumps(_clean(line), allow_nan=False, default=str)
  with open(jsonl, 'a') as f:
    f.write(text + '\n')


def cmd_add(args: argparse.Namespace) -> None:
  meta = _meta(args.meta)
  if args.kind == 'train_cli':
    payload = None
    metrics, error = extract_train_cli(args.workdir, meta)
  else:
    payload = _load(args.json)
    if payload is None and args.kind in ('bench_train', 'reference',
                                         'matmul', 'env'):
      metrics, error = {}, f'no JSON output at {args.json}'
    else:
      metrics, error = EXTRACTORS[args.kind](payload, meta)
  status, reason = 'ok', ''
  if args.rc in (124, 137):
    status, reason = 'failed', f'timed out after {args.timeout_s:.0f} s'
  elif args.rc != 0:
    status, reason = 'failed', f'exit status {args.rc}'
  elif error:
    status, reason = 'failed', 'step output: ' + error.splitlines()[-1][:300]
  line = {
      'step': args.step, 'kind': args.kind, 'status': status,
      'reason': reason, 'rc': args.rc, 'wall_s': args.wall_s,
      'timeout_s': args.timeout_s, 'mode': args.mode, 'meta': meta,
      'metrics': metrics, 'raw': payload,
  }
  if status == 'failed':
    line['error_tail'] = (error or '')[-2000:] or _tail(args.log)
  _append(args.jsonl, line)
  print(f'[{args.step}] {status}' + (f': {reason}' if reason else ''))


def cmd_skip(args: argparse.Namespace) -> None:
  _append(args.jsonl, {
      'step': args.step, 'kind': args.kind, 'status': 'skipped',
      'reason': f'skipped: {args.reason}', 'rc': None, 'wall_s': 0.0,
      'timeout_s': None, 'mode': args.mode, 'meta': _meta(args.meta),
      'metrics': {}, 'raw': None})
  print(f'[{args.step}] skipped: {args.reason}')


def cmd_probe(args: argparse.Namespace) -> None:
  """The machine, as JSON: Python, jax and its devices, torch, the GPU."""
  import platform  # pylint: disable=g-import-not-at-top
  out: dict[str, Any] = {
      'python': platform.python_version(), 'executable': sys.executable,
      'cpu_count': os.cpu_count(),
      'env': {k: os.environ.get(k) for k in (
          'PYTHONPATH', 'JAX_PLATFORMS', 'XLA_PYTHON_CLIENT_PREALLOCATE',
          'XLA_FLAGS', 'SMOKE')},
  }
  versions = {}
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax.checkpoint',
               'ml_collections', 'numpy', 'scipy', 'pandas'):
    try:
      mod = __import__(name, fromlist=['_'])
      versions[name] = getattr(mod, '__version__', 'installed')
    except Exception as e:  # pylint: disable=broad-except
      versions[name] = f'missing ({type(e).__name__}: {e})'[:200]
  out['versions'] = versions
  try:
    import jax  # pylint: disable=g-import-not-at-top
    out['backend'] = jax.default_backend()
    out['devices'] = [str(d) for d in jax.devices()]
    out['device_kind'] = jax.devices()[0].device_kind
  except Exception as e:  # pylint: disable=broad-except
    out['jax_error'] = f'{type(e).__name__}: {e}'[:500]
  # torch in its own process: a CUDA client of each framework in one process
  # would fight over the GPU's memory.
  code = ('import json, torch; d = {"torch": torch.__version__, '
          '"cuda": torch.cuda.is_available()}\n'
          'try:\n import torch_geometric as g; d["torch_geometric"] = '
          'g.__version__\nexcept Exception as e: d["torch_geometric"] = '
          '"missing: " + str(e)[:100]\n'
          'if d["cuda"]: d["cuda_device"] = torch.cuda.get_device_name(0)\n'
          'print(json.dumps(d))')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  try:
    p = subprocess.run([args.ref_python, '-c', code], capture_output=True,
                       text=True, timeout=120, env=env, check=False)
    out['reference_python'] = args.ref_python
    out['reference'] = (json.loads(p.stdout.strip().splitlines()[-1])
                        if p.returncode == 0 and p.stdout.strip()
                        else {'error': (p.stderr or p.stdout)[-300:]})
  except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
    out['reference'] = {'error': f'{type(e).__name__}: {e}'[:300]}
  try:
    p = subprocess.run(
        ['nvidia-smi', '--query-gpu=name,memory.total,driver_version,'
         'clocks.max.sm,power.limit', '--format=csv,noheader'],
        capture_output=True, text=True, timeout=30, check=False)
    out['nvidia_smi'] = p.stdout.strip() or p.stderr.strip()
  except (OSError, subprocess.TimeoutExpired) as e:
    out['nvidia_smi'] = f'unavailable ({type(e).__name__})'
  print(json.dumps(_clean(out), indent=1))


# --- summary ----------------------------------------------------------------


def read_lines(jsonl: str) -> list[dict[str, Any]]:
  lines = []
  if os.path.isfile(jsonl):
    for text in pathlib.Path(jsonl).read_text().splitlines():
      if text.strip():
        lines.append(json.loads(text))
  return lines


def _f(x: Any, digits: int = 3, scale: float = 1.0) -> str:
  if x is None:
    return '-'
  return f'{x * scale:.{digits}g}'


def _ok(lines, step):
  for line in lines:
    if line['step'] == step and line['status'] == 'ok':
      return line['metrics']
  return None


def _met(value, target, bigger=True) -> str:
  if value is None:
    return 'not measured'
  good = value >= target if bigger else value <= target
  return 'met' if good else 'NOT met'


def summarize(lines: list[dict[str, Any]]) -> str:
  mode = lines[0].get('mode', '?') if lines else '?'
  env = _ok(lines, 'env') or {}
  out = [f'# device suite ({mode})', '']
  out.append(
      f"device {env.get('device_kind', '?')} ({env.get('backend', '?')}), "
      f"jax {(env.get('versions') or {}).get('jax', '?')}, torch "
      f"{(env.get('reference') or {}).get('torch', '?')}, nvidia-smi: "
      f"{env.get('nvidia_smi', '-')}")
  if mode == 'smoke':
    out += ['', 'SMOKE: tiny shapes on whatever device is here; the numbers '
            'check the plumbing and say nothing about speed.']
  out += ['', '| step | status | wall s | note |', '|---|---|---|---|']
  for line in lines:
    note = line.get('reason') or ''
    out.append(f"| {line['step']} | {line['status']} | "
               f"{_f(line.get('wall_s'), 3)} | {note[:120]} |")

  out += ['', '## Training side by side (same device, same files)', '',
          '| shape | impl | precision | epoch s (whole) | first epoch s | '
          'step ms | TFLOP/s (model) | eval ms | compile s | '
          'peak device GiB | peak RSS GiB |',
          '|---|---|---|---|---|---|---|---|---|---|---|']
  for shape in ('clothing', 'baby'):
    for prec in ('float32', 'tf32', 'bf16'):
      m = _ok(lines, f'ours_{shape}_{prec}')
      if m:
        out.append(
            f"| {shape} | ours | {prec} | {_f(m['epoch_s'])} | "
            f"{_f(m.get('first_epoch_s'))} | {_f(m['step_s'], 3, 1e3)} | "
            f"{_f(m.get('model_tflops'))} | {_f(m['eval_s'], 3, 1e3)} | "
            f"{_f(m.get('compile_s'))} | {_f(m.get('device_peak_gib'))} | "
            f"{_f(m.get('peak_rss_gib'))} |")
    m = _ok(lines, f'official_{shape}')
    if m:
      epoch = m['epoch_s']
      if epoch is None and m.get('epoch_s_extrapolated') is not None:
        epoch_txt = f"{_f(m['epoch_s_extrapolated'])} EXTRAPOLATED"
      else:
        epoch_txt = _f(epoch)
      out.append(
          f"| {shape} | official | its default "
          f"({m.get('float32_matmul_precision')}) | {epoch_txt} | "
          f"{_f((m.get('epoch_times_s') or [None])[0])} | "
          f"{_f(m.get('step_s'), 3, 1e3)} | - | {_f(m['eval_s'], 3, 1e3)} | "
          f"- | {_f(m.get('device_peak_gib'))} | "
          f"{_f(m.get('peak_rss_gib'))} |")

  out += ['', '## Ratios (official / ours; > 1: ours faster or smaller)', '',
          '| shape | epoch, matched float32 | epoch, its default vs our '
          'tf32 | eval (float32) | peak device memory (float32) |',
          '|---|---|---|---|---|']
  ratios = {}
  for shape in ('clothing', 'baby'):
    ref = _ok(lines, f'official_{shape}')
    f32 = _ok(lines, f'ours_{shape}_float32')
    tf32 = _ok(lines, f'ours_{shape}_tf32')
    if not ref:
      continue
    ref_epoch = ref['epoch_s'] or ref.get('epoch_s_extrapolated')
    r = {
        'f32': ref_epoch / f32['epoch_s'] if f32 and f32['epoch_s'] else None,
        'tf32': (ref_epoch / tf32['epoch_s'] if tf32 and tf32['epoch_s']
                 else None),
        'eval': (ref['eval_s'] / f32['eval_s'] if f32 and f32['eval_s']
                 else None),
        'mem': (ref['device_peak_gib'] / f32['device_peak_gib']
                if f32 and ref.get('device_peak_gib')
                and f32.get('device_peak_gib') else None),
    }
    ratios[shape] = r
    if all(v is None for v in r.values()):
      continue
    out.append(f"| {shape} | {_f(r['f32'])}x | {_f(r['tf32'])}x | "
               f"{_f(r['eval'])}x | {_f(r['mem'])}x |")

  c32 = _ok(lines, 'ours_clothing_float32') or {}
  ctf = _ok(lines, 'ours_clothing_tf32') or {}
  cbf = _ok(lines, 'ours_clothing_bf16') or {}
  rc = ratios.get('clothing', {})
  peaks = [m.get('device_peak_gib') for m in (c32, ctf, cbf)
           if m.get('device_peak_gib') is not None]
  peak_gb = max(peaks) * GIB / 1e9 if peaks else None
  evals = [m.get('eval_s') for m in (c32, ctf, cbf)
           if m.get('eval_s') is not None]
  fp32_frac = (c32['model_tflops'] / H200_PEAK_TFLOPS['float32']
               if c32.get('model_tflops') else None)
  out += ['', '## Targets (issue 14: full MENTOR, Clothing shape, H200)', '']
  if mode == 'smoke':
    out.append('(smoke run: shapes are tiny, the verdicts mean nothing)')
  t = TARGETS
  out += [
      f"- strict float32 at >= {t['fp32_fraction_of_peak']:.0%} of the "
      f"{H200_PEAK_TFLOPS['float32']:.0f} TFLOP/s FP32 peak: "
      f"{_f(c32.get('model_tflops'))} TFLOP/s = {_f(fp32_frac, 2, 100)} %, "
      f"{_f(c32.get('epoch_s'))} s/epoch: "
      f"{_met(fp32_frac, t['fp32_fraction_of_peak'])}",
      f"- TF32 epoch <= {t['tf32_bf16_epoch_s']} s: {_f(ctf.get('epoch_s'))}"
      f" s: {_met(ctf.get('epoch_s'), t['tf32_bf16_epoch_s'], False)}; "
      f"bf16: {_f(cbf.get('epoch_s'))} s: "
      f"{_met(cbf.get('epoch_s'), t['tf32_bf16_epoch_s'], False)}",
      f"- peak device memory <= {t['peak_device_gb']} GB: "
      f"{_f(peak_gb)} GB (max over the three modes): "
      f"{_met(peak_gb, t['peak_device_gb'], False)}",
      f"- full evaluation < {t['eval_s'] * 1e3:.0f} ms: "
      f"{_f(max(evals) if evals else None, 3, 1e3)} ms (slowest mode): "
      f"{_met(max(evals) if evals else None, t['eval_s'], False)}",
      f"- vs official, matched float32 >= {t['matched_float32_speedup']}x: "
      f"{_f(rc.get('f32'))}x: {_met(rc.get('f32'), 2.0)}",
      f"- our TF32 vs its default >= "
      f"{t['tf32_vs_official_default_speedup']}x: {_f(rc.get('tf32'))}x: "
      f"{_met(rc.get('tf32'), 5.0)}",
      f"- memory >= {t['memory_ratio']}x less: {_f(rc.get('mem'))}x: "
      f"{_met(rc.get('mem'), 4.0)}",
  ]

  knobs = [line for line in lines if line['step'].startswith('knob_')
           and line['status'] == 'ok']
  if knobs:
    out += ['', '## Knobs (Clothing; compare with the same precision above)',
            '', '| step | overrides | epoch s | eval ms | peak device GiB |',
            '|---|---|---|---|---|']
    for line in knobs:
      m = line['metrics']
      out.append(f"| {line['step']} | {m.get('overrides')} | "
                 f"{_f(m['epoch_s'])} | {_f(m['eval_s'], 3, 1e3)} | "
                 f"{_f(m.get('device_peak_gib'))} |")

  mm = _ok(lines, 'matmul')
  if mm:
    out += ['', '## Matmul rates (F [I, 4096] @ W [4096, 768]; fwd+bwd = '
            'the product and its weight gradient)', '',
            '| I | fwd f32 TFLOP/s | fwd+bwd float32 | tf32 | bf16 |',
            '|---|---|---|---|---|']
    for row in mm['rows']:
      out.append(f"| {row['n_items']} | {_f(row.get('fwd_tflops'))} | "
                 f"{_f(row.get('fwd_bwd_float32_tflops'))} | "
                 f"{_f(row.get('fwd_bwd_tf32_tflops'))} | "
                 f"{_f(row.get('fwd_bwd_bf16_tflops'))} |")

  tik = [line for line in lines if line['step'].startswith('tiktok_')
         and line['status'] == 'ok']
  if tik:
    out += ['', '## TikTok precision (real data, official hyper-parameters)',
            '', '| run | epochs | best valid epoch | test R@20 | test N@20 | '
            'valid R@20 | s/epoch | eval ms | final loss |',
            '|---|---|---|---|---|---|---|---|---|']
    for line in tik:
      m = line['metrics']
      test, valid = m.get('test') or {}, m.get('valid') or {}
      out.append(
          f"| {line['step']} | {m.get('epochs_run')} | {m.get('best_epoch')}"
          f" | {_f(test.get('recall@20'), 4)} | {_f(test.get('ndcg@20'), 4)}"
          f" | {_f(valid.get('recall@20'), 4)} | {_f(m.get('epoch_s'))} | "
          f"{_f(m.get('eval_s'), 3, 1e3)} | {_f(m.get('final_loss'), 5)} |")
  return '\n'.join(out) + '\n'


def cmd_summary(args: argparse.Namespace) -> None:
  text = summarize(read_lines(args.jsonl))
  if args.out:
    pathlib.Path(args.out).write_text(text)
  print(text)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = p.add_subparsers(dest='cmd', required=True)
  add = sub.add_parser('add', help='record one finished step')
  skip = sub.add_parser('skip', help='record a step that did not run')
  for q in (add, skip):
    q.add_argument('--jsonl', required=True)
    q.add_argument('--step', required=True)
    q.add_argument('--kind', required=True,
                   choices=sorted(EXTRACTORS) + ['train_cli'])
    q.add_argument('--mode', default='device')
    q.add_argument('--meta', action='append', default=[],
                   metavar='KEY=JSON')
  add.add_argument('--rc', type=int, required=True)
  add.add_argument('--wall-s', type=float, required=True)
  add.add_argument('--timeout-s', type=float, required=True)
  add.add_argument('--json', help="the step's JSON output")
  add.add_argument('--workdir', help='train_cli: the run directory')
  add.add_argument('--log', help="the step's log (for a failure's tail)")
  skip.add_argument('--reason', required=True)
  probe = sub.add_parser('probe', help='print the machine as JSON')
  probe.add_argument('--ref-python', default=sys.executable)
  summ = sub.add_parser('summary', help='markdown summary of the JSONL')
  summ.add_argument('--jsonl', required=True)
  summ.add_argument('--out')
  args = p.parse_args()
  {'add': cmd_add, 'skip': cmd_skip, 'probe': cmd_probe,
   'summary': cmd_summary}[args.cmd](args)


if __name__ == '__main__':
  main()
