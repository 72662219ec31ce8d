"""bench/device_suite.sh in smoke mode, so that it cannot rot between GPU calls.

The suite is meant for the lent GPU machine (bench/RESULTS.md, "GPU (H200):
how to run"); SMOKE=1 runs its steps at tiny sizes on a CPU. Here it runs in
CI's own environment: no carried wheels, no official checkout, no torch, so
those steps must be recorded as skipped with a reason, never fail the suite.

Its smoke run (about 40 s) is marked slow, out of the default run and CI:
a session that is lent a device runs `python -m pytest -q -m slow
tests/test_device_suite.py` before its first device call. It runs one step
of each kind (the CLI
smoke run, a bench_train measurement with its synthetic data, the official
side, the matmul bench); DEVICE_SUITE_ALL_STEPS=1 runs every step (about
six minutes on 2 cores).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SUITE = REPO / 'bench' / 'device_suite.sh'
CI_STEPS = ('wheels', 'env', 'smoke_train', 'ours_clothing_float32',
            'official_clothing', 'matmul')


def _strict_json(text: str):
  def reject(name):
    raise ValueError(f'non-finite number {name} in a measurement')
  return json.loads(text, parse_constant=reject)


def _is_number(x) -> bool:
  return (isinstance(x, (int, float)) and not isinstance(x, bool)
          and math.isfinite(x))


@pytest.fixture(scope='module')
def suite_run(tmp_path_factory):
  out = tmp_path_factory.mktemp('device_suite_out')
  env = dict(os.environ, SMOKE='1', PYTHON=sys.executable,
             REF_PYTHON=sys.executable,
             # Nothing carried: CI has neither the wheels nor the checkout.
             WHEEL_DIR=str(out / 'no_wheels'),
             MENTOR_SRC=str(out / 'no_checkout'),
             TIKTOK_DIR=str(out / 'no_tiktok'),
             TMPDIR=str(tmp_path_factory.mktemp('scratch')))
  env.pop('OUT', None)
  if not os.environ.get('DEVICE_SUITE_ALL_STEPS'):
    env['STEPS'] = ','.join(CI_STEPS)
  proc = subprocess.run(['bash', str(SUITE), str(out)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900,
                        check=False)
  return out, proc


@pytest.mark.slow
def test_suite_finishes_and_writes_three_files(suite_run):
  out, proc = suite_run
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  names = sorted(p.name for p in out.iterdir())
  # The device tool returns at most 8 files; the suite writes 3.
  assert names == ['measurements.jsonl', 'suite.log', 'summary.md'], names
  summary = (out / 'summary.md').read_text()
  assert '# device suite (smoke)' in summary
  assert summary.strip() in proc.stdout  # printed last, for the reply's tail


@pytest.mark.slow
def test_measurements_are_strict_json_with_numbers(suite_run):
  out, _ = suite_run
  lines = [_strict_json(t) for t in
           (out / 'measurements.jsonl').read_text().splitlines()]
  by_step = {line['step']: line for line in lines}
  expected = set(CI_STEPS) | {'synth_clothing'}
  assert expected <= set(by_step), sorted(by_step)
  for line in lines:
    assert line['status'] in ('ok', 'failed', 'skipped'), line
    assert line['mode'] == 'smoke'
    if line['status'] == 'skipped':
      assert line['reason'].startswith('skipped: '), line
    if line['status'] == 'failed':
      pytest.fail(f"{line['step']} failed: {line['reason']}\n"
                  f"{line.get('error_tail', '')}")

  # Skipped, with the reason, because nothing was carried.
  assert by_step['official_clothing']['status'] == 'skipped'
  assert 'no official checkout' in by_step['official_clothing']['reason']
  assert by_step['wheels']['status'] == 'skipped'
  assert 'no wheels' in by_step['wheels']['reason']

  env = by_step['env']['metrics']
  assert env['backend'] == 'cpu' and env['versions']['jax']

  smoke = by_step['smoke_train']['metrics']
  assert smoke['epochs_run'] == 1
  assert 0.0 <= smoke['test']['recall@20'] <= 1.0
  assert _is_number(smoke['first_epoch_s']) and smoke['first_epoch_s'] > 0

  ours = by_step['ours_clothing_float32']['metrics']
  assert ours['variant'] == 'full' and ours['precision'] == 'float32'
  assert ours['losses_finite'] is True
  for key in ('epoch_s', 'step_s', 'eval_s', 'compile_s', 'peak_rss_gib',
              'model_tflops'):
    assert _is_number(ours[key]) and ours[key] > 0, (key, ours[key])
  assert ours['epoch_s_stats']['n'] == 1  # one whole timed epoch
  # The suite's smoke shape (150 / 180 users in the script), read back.
  assert ours['n_users'] > 0 and ours['n_items'] > 0

  rows = by_step['matmul']['metrics']['rows']
  assert rows and all(_is_number(r['fwd_bwd_float32_tflops']) for r in rows)


@pytest.mark.slow
def test_refuses_to_overwrite(suite_run):
  out, _ = suite_run
  before = (out / 'measurements.jsonl').read_text()
  proc = subprocess.run(['bash', str(SUITE), str(out)], cwd=REPO,
                        env=dict(os.environ, SMOKE='1', STEPS='none'),
                        capture_output=True, text=True, timeout=60,
                        check=False)
  assert proc.returncode == 2
  assert 'exists' in proc.stderr
  assert (out / 'measurements.jsonl').read_text() == before


def _record_module():
  sys.path.insert(0, str(REPO / 'bench'))
  try:
    import device_record  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  return device_record


def test_model_flops_match_the_spec_table():
  rec = _record_module()
  # MENTOR_SPEC §7, term by term for Clothing (U 39,387, I 23,033):
  # visual MLP 1.47e11 + 1.45e11, text 1.59e10 + 1.4e10, ID 1.5e9 + 3e9,
  # user InfoNCE 3.97e11 + 7.94e11, item 1.36e11 + 2.72e11.
  table = (1.47e11 + 1.45e11 + 1.59e10 + 1.4e10 + 1.5e9 + 3e9 + 3.97e11
           + 7.94e11 + 1.36e11 + 2.72e11)
  got = rec.model_flops_per_step(39387, 23033, 4096, 384)
  assert abs(got - table) / table < 0.01, (got, table)
  # Baby: the spec's ≈4.3e11.
  assert abs(rec.model_flops_per_step(19445, 7050, 4096, 384) - 4.3e11) < 1e10


def test_summary_ratios_and_verdicts():
  rec = _record_module()

  def ours(prec, epoch, eval_s, peak):
    return {'step': f'ours_clothing_{prec}', 'status': 'ok',
            'mode': 'device', 'metrics': {
                'epoch_s': epoch, 'step_s': epoch / 97, 'eval_s': eval_s,
                'device_peak_gib': peak, 'model_tflops': None}}

  lines = [
      {'step': 'env', 'status': 'ok', 'mode': 'device',
       'metrics': {'device_kind': 'NVIDIA H200', 'backend': 'gpu'}},
      ours('float32', 4.0, 0.04, 2.0), ours('tf32', 0.8, 0.03, 2.5),
      {'step': 'official_clothing', 'status': 'ok', 'mode': 'device',
       'metrics': {'epoch_s': 12.0, 'eval_s': 0.4, 'device_peak_gib': 20.0,
                   'float32_matmul_precision': 'highest'}},
      {'step': 'official_baby', 'status': 'skipped', 'mode': 'device',
       'reason': 'skipped: suite budget', 'metrics': {}},
  ]
  text = rec.summarize(lines)
  # 12 / 4 = 3x at float32, 12 / 0.8 = 15x against TF32, memory 20 / 2.
  assert '| clothing | 3x | 15x | 10x | 10x |' in text
  assert 'matched float32 >= 2.0x: 3x: met' in text
  assert 'TF32 epoch <= 1.0 s: 0.8 s: met' in text
  # The peak is the largest of the modes: 2.5 GiB = 2.68 GB.
  assert 'memory <= 3.0 GB: 2.68 GB' in text
  assert '| official_baby | skipped |' in text
