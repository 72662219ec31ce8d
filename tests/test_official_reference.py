"""The harness that runs the OFFICIAL DiffMM and MMSSL code on our data.

Without torch: the converter (bench/reference/official_data.py) writes the
exact split into each codebase's file forms and refuses bad folders; the
worker's argv building and MMSSL log parsing; the module stub shim. With
the torch interpreter and the official checkouts (slow; skipped with the
reason when absent; REF_PYTHON, DIFFMM_SRC, MMSSL_SRC override the
defaults ../refvenv/bin/python, ../ref/DiffMM, ../ref/MMSSL/MMSSL): one
epoch of each official codebase on a tiny folder gives finite numbers.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

import conftest
from conftest import write_mmrec_folder

REPO = pathlib.Path(__file__).resolve().parents[1]
REF_PYTHON = pathlib.Path(os.environ.get('REF_PYTHON')
                          or REPO.parent / 'refvenv' / 'bin' / 'python')
SRC = {'diffmm': pathlib.Path(os.environ.get('DIFFMM_SRC')
                              or REPO.parent / 'ref' / 'DiffMM'),
       'mmssl': pathlib.Path(os.environ.get('MMSSL_SRC')
                             or REPO.parent / 'ref' / 'MMSSL' / 'MMSSL')}


official_data = conftest.import_bench_reference('official_data')
worker = conftest.import_bench_reference('official_worker')
shims = conftest.import_bench_reference('torch_shims')


def _tiny_rows(n_users=30, n_items=80, per_user=8, seed=0):
  """Shuffled (user, item, label) rows; user n_users-1 has no train row."""
  rng = np.random.default_rng(seed)
  rows = []
  for u in range(n_users):
    items = rng.choice(n_items - 1, size=per_user, replace=False)  # last
    for j, i in enumerate(items):                  # item: no interaction
      label = 0 if j < per_user - 3 else (1 if j == per_user - 3 else 2)
      if u == n_users - 1 and label == 0:
        label = 2  # a cold-start user: valid/test rows only
      rows.append((u, int(i), label))
  order = rng.permutation(len(rows))
  return [rows[k] for k in order]


def _tiny_folder(tmp_path, rows=None, name='toy'):
  rng = np.random.default_rng(1)
  return write_mmrec_folder(
      tmp_path / name, _tiny_rows() if rows is None else rows,
      feat_v=rng.normal(size=(80, 8)).astype(np.float32),
      feat_t=rng.normal(size=(80, 6)).astype(np.float16))


# ------------------------------------------------------------ the converter


def test_both_file_forms_round_trip_the_split_exactly(tmp_path):
  rows = _tiny_rows()
  folder = _tiny_folder(tmp_path, rows)
  want = [{(u, i) for u, i, lab in rows if lab == k} for k in range(3)]
  split = official_data.read_folder(folder)
  assert (split.n_users, split.n_items) == (30, 80)
  assert [split.pairs(k) for k in range(3)] == want

  out = official_data.write_diffmm(split, tmp_path / 'diffmm')
  assert official_data.diffmm_pairs(out) == want
  for k, fname in enumerate(official_data.DIFFMM_FILES):
    with open(out / fname, 'rb') as f:
      mat = pickle.load(f)
    # What DiffMM's own Datasets/tiktok/*.pkl hold.
    assert type(mat) is sp.coo_matrix  # pylint: disable=unidiomatic-typecheck
    assert mat.shape == (30, 80) and mat.dtype == np.float64
    assert mat.row.dtype == np.int32 and np.all(mat.data == 1.0)
    key = mat.row.astype(np.int64) * 80 + mat.col
    assert np.all(np.diff(key) > 0), f'{fname} not sorted by (user, item)'

  out = official_data.write_mmssl(split, tmp_path / 'mmssl')
  assert official_data.mmssl_pairs(out) == want
  with open(out / 'train_mat', 'rb') as f:
    train_mat = pickle.load(f)
  assert type(train_mat) is sp.csr_matrix  # pylint: disable=unidiomatic-typecheck
  assert train_mat.shape == (30, 80) and train_mat.dtype == np.float32
  assert set(zip(*train_mat.nonzero())) == want[0]
  assert '29' not in json.loads((out / 'train.json').read_text())

  for d in (tmp_path / 'diffmm', tmp_path / 'mmssl'):
    for slot, src in (('image_feat.npy', 'image_feat.npy'),
                      ('text_feat.npy', 'text_feat.npy')):
      a, b = np.load(d / slot), np.load(folder / src)
      assert a.dtype == b.dtype and np.array_equal(a, b)


def test_the_second_modality_file_is_chosen_by_name(tmp_path):
  folder = _tiny_folder(tmp_path)
  audio = np.arange(80 * 3, dtype=np.float16).reshape(80, 3)
  np.save(folder / 'audio_feat.npy', audio)
  split = official_data.read_folder(folder, second='audio_feat.npy')
  out = official_data.write_diffmm(split, tmp_path / 'd')
  assert np.array_equal(np.load(out / 'text_feat.npy'), audio)


def _bad_inter(tmp_path, text):
  folder = _tiny_folder(tmp_path)
  (folder / 'toy.inter').write_text(text)
  return folder


@pytest.mark.parametrize('text,match', [
    ('userID\titemID\n0\t1\n', 'lacks'),
    ('userID\titemID\tx_label\n0\t1\t0\n1\t2\t3\n', 'x_label 3'),
    ('userID\titemID\tx_label\n0\t1\t0\n0\t1\t2\n', 'occurs 2 times'),
    ('userID\titemID\tx_label\n0\t1\t0\n-1\t2\t2\n', 'negative'),
    ('userID\titemID\tx_label\n0\tx\t0\n', 'not an integer'),
    ('userID\titemID\tx_label\n0\t1\t0\n0\t80\t2\n', 'itemID 80'),
    ('userID\titemID\tx_label\n0\t1\t0\n0\t2\t1\n', 'test'),
    ('userID\titemID\tx_label\n0\t1\n', 'fields'),
])
def test_a_bad_inter_file_is_refused_with_the_reason(tmp_path, text, match):
  folder = _bad_inter(tmp_path, text)
  with pytest.raises(official_data.DataError, match=match):
    official_data.read_folder(folder)


def test_bad_feature_files_are_refused(tmp_path):
  folder = _tiny_folder(tmp_path)
  with pytest.raises(official_data.DataError, match='audio_feat.npy not'):
    official_data.read_folder(folder, second='audio_feat.npy')
  np.save(folder / 'short.npy', np.zeros((79, 4), np.float32))
  with pytest.raises(official_data.DataError, match='short.npy 79'):
    official_data.read_folder(folder, second='short.npy')
  np.save(folder / 'nan.npy', np.full((80, 4), np.nan, np.float32))
  with pytest.raises(official_data.DataError, match='NaN'):
    official_data.read_folder(folder, second='nan.npy')


def test_the_converter_cli_writes_a_folder(tmp_path):
  folder = _tiny_folder(tmp_path)
  official_data.main(['--folder', str(folder), '--codebase', 'mmssl',
                      '--out', str(tmp_path / 'o')])
  assert sorted(p.name for p in (tmp_path / 'o').iterdir()) == [
      'image_feat.npy', 'test.json', 'text_feat.npy', 'train.json',
      'train_mat', 'val.json']


# ------------------------------------------------- the worker, without torch


def test_official_argv_is_the_preset_then_the_overrides():
  argv = worker.official_argv('diffmm', 'tiktok', ['batch=16', 'reg=1e-3'])
  assert argv[:10] == ['--reg', '1e-4', '--ssl_reg', '1e-2', '--trans', '1',
                       '--e_loss', '0.1', '--cl_method', '1']
  assert argv[10:] == ['--batch', '16', '--reg', '1e-3']  # last one wins
  assert worker.official_argv('mmssl', 'tiktok', []) == []
  with pytest.raises(worker.UsageError, match='set by the worker'):
    worker.official_argv('mmssl', 'defaults', ['epoch=3'])
  with pytest.raises(worker.UsageError, match='KEY=VALUE'):
    worker.official_argv('mmssl', 'defaults', ['batch'])


def test_mmssl_loss_is_read_from_its_first_train_log_line():
  log = ['PID: 1', 'Epoch 0 [0.2s]: train==[5.68411=4.12230 + 0.00016 + '
         '0.00000  + 0.00000]', 'Epoch 0 [0.2s + 0.0s]: train==[9.0=1 + 2 '
         '+ 3], recall=[0.5]']
  assert worker.parse_mmssl_loss(log) == {
      'loss': 5.68411, 'mf_loss': 4.1223, 'emb_loss': 0.00016,
      'reg_loss': 0.0}
  with pytest.raises(RuntimeError, match='no "train'):
    worker.parse_mmssl_loss(['PID: 1'])


# DiffMM's Params.py namespace for `--data baby` + the README's Baby flags,
# written out by hand from Params.py (the flags official_settings maps).
DIFFMM_BABY = {
    'lr': 1e-3, 'batch': 1024, 'latdim': 64, 'gnn_layer': 1, 'reg': 1e-5,
    'ssl_reg': 0.1, 'temp': 0.5, 'keepRate': 1.0, 'dims': '[1000]',
    'd_emb_size': 10, 'steps': 5, 'noise_scale': 0.1, 'noise_min': 1e-4,
    'noise_max': 0.02, 'rebuild_k': 1, 'e_loss': 0.01, 'ris_lambda': 0.5,
    'ris_adj_lambda': 0.2, 'trans': 0, 'cl_method': 0}


def test_our_settings_are_checked_flag_by_flag_against_the_official():
  settings = conftest.import_bench_reference('official_settings')
  table3 = conftest.import_bench_reference('table3')
  ours = table3.our_config('diffmm', 'baby')
  assert settings.differences('diffmm', ours, DIFFMM_BABY) == []
  changed = {**DIFFMM_BABY, 'keepRate': 0.5, 'dims': '[1000, 200]'}
  del changed['e_loss']
  assert settings.differences('diffmm', ours, changed) == [
      "keep_rate: ours 1.0, official --keepRate 0.5",
      "denoise_hidden: ours 1000, official --dims '[1000, 200]'",
      'e_loss: not in the official parser (wrong checkout?)']
  # MMSSL: regs[0] is our reg_weight, len(weight_size) our layers, and
  # G_rate (not g_rate, which main.py never reads) our g_rate.
  mmssl = table3.our_config('mmssl', 'baby')
  names = settings.FLAGS['mmssl']
  official = {flag: mmssl.get(key) for key, (flag, _) in names.items()}
  official.update(regs='[1e-5,1e-5,1e-2]', weight_size='[64, 64]',
                  g_rate=2.9e-05)
  assert settings.differences('mmssl', mmssl, official) == []
  official.update(regs='[1e-4,1e-5,1e-2]', weight_size='[64]')
  assert [p.split(':')[0] for p in
          settings.differences('mmssl', mmssl, official)] == [
              'reg_weight', 'n_ui_layers']


def test_stub_missing_modules_stubs_only_what_cannot_be_imported():
  names = ['oh_fake_pkg', 'oh_fake_pkg.sub']
  try:
    stubbed = shims.stub_missing_modules({'oh_fake_pkg.sub': ['Thing'],
                                          'json': ['nothing_here']})
    assert stubbed == names
    from oh_fake_pkg.sub import Thing  # pylint: disable=g-import-not-at-top,import-error
    assert Thing() is None
    assert sys.modules['json'].__file__  # the real one, untouched
    assert not hasattr(sys.modules['json'], 'nothing_here')
  finally:
    for n in names:
      sys.modules.pop(n, None)
  assert shims.stub_missing_modules({'json': []}) == []


# ------------------------------------------------- the official code (torch)


def _official_ready(codebase: str) -> str | None:
  entry = SRC[codebase] / worker.ENTRY[codebase]
  if not entry.is_file():
    return f'no official {codebase} checkout ({entry} absent)'
  if not REF_PYTHON.is_file():
    return f'no torch interpreter at {REF_PYTHON} (set REF_PYTHON)'
  probe = subprocess.run([str(REF_PYTHON), '-c', 'import torch, scipy, tqdm'],
                         capture_output=True, text=True, check=False)
  if probe.returncode:
    return f'{REF_PYTHON} lacks torch / scipy / tqdm'
  return None


def _listing(path: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(path)) for p in path.rglob('*'))


@pytest.mark.slow  # ~10 s each on 2 cores
@pytest.mark.parametrize('codebase,batch_flag,seed', [
    ('diffmm', 'batch', 421), ('mmssl', 'batch_size', 2022)])
def test_one_official_epoch_gives_finite_numbers(tmp_path, codebase,
                                                 batch_flag, seed):
  reason = _official_ready(codebase)
  if reason:
    pytest.skip(reason)
  folder = _tiny_folder(tmp_path)
  np.save(folder / 'audio_feat.npy',
          np.random.default_rng(2).normal(size=(80, 4)).astype(np.float16))
  before, src_before = _listing(folder), _listing(SRC[codebase])
  scratch = tmp_path / 'scratch'
  scratch.mkdir()
  proc = subprocess.run(
      [str(REF_PYTHON), str(REPO / 'bench' / 'reference' /
                            'official_worker.py'),
       '--codebase', codebase, '--src', str(SRC[codebase]), '--preset',
       'tiktok', '--folder', str(folder), '--t-feat', 'audio_feat.npy',
       '--epochs', '1', '--seed', str(seed), '--set', f'{batch_flag}=16',
       '--threads', '1', '--test-procs', '1', '--scratch', str(scratch)],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  line = [ln for ln in proc.stdout.splitlines()
          if ln.startswith('BENCH_RESULT ')][-1]
  r = json.loads(line[len('BENCH_RESULT '):])
  assert r['codebase'] == codebase and r['seed'] == seed
  assert (r['n_users'], r['n_items']) == (30, 80)
  assert r['features'] == ['image_feat.npy', 'audio_feat.npy']
  [e] = r['metrics_per_epoch']
  assert e['epoch'] == 0 and e['train_s'] > 0 and e['test_s'] > 0
  assert math.isfinite(e['loss']) and e['loss'] > 0
  assert all(math.isfinite(v) for v in e['losses'].values())
  assert 0.0 < e['test']['recall@20'] <= 1.0
  assert 0.0 <= e['test']['ndcg@20'] <= 1.0
  if codebase == 'diffmm':
    assert r['official_args']['data'] == worker.DIFFMM_DATA_SLOT  # 2 modal.
    assert r['official_args']['reg'] == 1e-4  # the tiktok preset
  else:
    assert r['loader_n_items'] == 79  # its loader: max item id + 1
    assert 0.0 <= e['valid']['recall@20'] <= 1.0
    assert e['test_called_by'] in ('official train()', 'worker')
  # Nothing left behind, nothing written into the folder or the checkout.
  assert list(scratch.iterdir()) == []
  assert _listing(folder) == before
  assert _listing(SRC[codebase]) == src_before


@pytest.mark.slow  # ~15 s on 2 cores
def test_the_parsers_give_our_settings_and_mmssl_times_n_batches(tmp_path):
  for codebase in SRC:
    reason = _official_ready(codebase)
    if reason:
      pytest.skip(reason)
  settings = conftest.import_bench_reference('official_settings')
  table3 = conftest.import_bench_reference('table3')
  folder = _tiny_folder(tmp_path)
  script = str(REPO / 'bench' / 'reference' / 'official_worker.py')

  def result(*flags):
    proc = subprocess.run([str(REF_PYTHON), script, '--folder', str(folder),
                           '--seed', '0', *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines()
            if ln.startswith('BENCH_RESULT ')][-1]
    return json.loads(line[len('BENCH_RESULT '):]), proc.stderr

  for codebase in SRC:
    r, _ = result('--codebase', codebase, '--src', str(SRC[codebase]),
                  '--preset', 'baby', '--args-only')
    assert settings.differences(codebase, table3.our_config(
        codebase, 'baby'), r['official_args']) == [], codebase
  assert r['official_args']['G_rate'] == 1e-4  # MMSSL's, not g_rate
  # 29 users x 5 training rows = 145 rows, batch 16: 10 batches an epoch;
  # --batches 3 runs 3 of them (tqdm's bar counts them on stderr).
  r, err = result('--codebase', 'mmssl', '--src', str(SRC['mmssl']),
                  '--preset', 'baby', '--set', 'batch_size=16',
                  '--batches', '3', '--threads', '1', '--test-procs', '1')
  assert (r['n_batch'], r['batches_timed']) == (145 // 16 + 1, 3)
  assert '3/3' in err and '/10' not in err
  [e] = r['metrics_per_epoch']
  assert math.isfinite(e['loss']) and e['train_s'] > 0


# MMSSL with k = 4 of 80 items, so that the modality graphs it carries
# from epoch to epoch are not empty (at its default rate k = 0 here).
RESUME_FLAGS = {'diffmm': ['--set', 'batch=16'],
                'mmssl': ['--set', 'batch_size=16', '--set',
                          'm_topk_rate=0.05', '--test-procs', '1']}


@pytest.mark.slow  # ~30 s (DiffMM), ~20 s (MMSSL) on 2 cores
@pytest.mark.parametrize('codebase', sorted(RESUME_FLAGS))
def test_a_resumed_official_run_is_the_uninterrupted_run(tmp_path, codebase):
  reason = _official_ready(codebase)
  if reason:
    pytest.skip(reason)
  folder = _tiny_folder(tmp_path)
  script = str(REPO / 'bench' / 'reference' / 'official_worker.py')

  def run(epochs, resume=None, seed=5):
    flags = ['--resume-dir', str(resume)] if resume else []
    proc = subprocess.run(
        [str(REF_PYTHON), script, '--codebase', codebase, '--src',
         str(SRC[codebase]), '--preset', 'baby', '--folder', str(folder),
         '--epochs', str(epochs), '--seed', str(seed), '--threads', '1',
         *RESUME_FLAGS[codebase], *flags],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode:
      return proc
    line = [ln for ln in proc.stdout.splitlines()
            if ln.startswith('BENCH_RESULT ')][-1]
    return json.loads(line[len('BENCH_RESULT '):])['metrics_per_epoch']

  whole = run(3)
  assert not isinstance(whole, subprocess.CompletedProcess), whole.stderr
  state = tmp_path / 'state'
  first = run(1, state)
  assert [e['losses'] for e in first] == [whole[0]['losses']]
  resumed = run(3, state)  # goes on from epoch 1
  strip = lambda es: [{k: e[k] for k in ('epoch', 'losses', 'test')}
                      for e in es]
  assert strip(resumed) == strip(whole)
  assert resumed[0]['train_s'] == first[0]['train_s']  # kept, not rerun
  # Another seed may not go on from this state.
  refused = run(4, state, seed=6)
  assert refused.returncode == 2 and 'another command line' in refused.stderr


@pytest.mark.slow  # ~15 s
def test_the_denoiser_phase_step_is_the_official_codes(tmp_path):
  """Our DiffMM denoiser against the OFFICIAL Model.py (torch): the same
  weights, rows and randomness (the t, noise and dropout mask ours drew)
  give the same per-row losses, the same Adam step and the same reverse
  pass before and after it."""
  reason = _official_ready('diffmm')
  if reason:
    pytest.skip(reason)
  import jax
  import jax.numpy as jnp
  import optax
  from mentor_jax.models.diffmm import diffusion
  n_items, hidden, emb, dim, batch = 40, 16, 10, 8, 6
  rng = np.random.default_rng(0)
  p = diffusion.init_denoiser(jax.random.PRNGKey(1), n_items, hidden, emb)
  x0 = (rng.random((batch, n_items)) < 0.2).astype(np.float32)
  item_emb = rng.normal(size=(n_items, dim)).astype(np.float32)
  feats = rng.normal(size=(n_items, dim)).astype(np.float32)
  sched = diffusion.schedule(5, 0.1, 1e-4, 0.02)
  key, e_loss, lr = jax.random.PRNGKey(7), 0.1, 1e-3
  # The randomness training_losses draws from `key`, for the torch side.
  t_key, noise_key, drop_key = jax.random.split(key, 3)
  t = jax.random.randint(t_key, (batch,), 0, 5)
  assert len(set(np.asarray(t).tolist())) > 2  # several timesteps, t = 0
  noise = jax.random.normal(noise_key, x0.shape)
  keep = jax.random.bernoulli(drop_key, 1.0 - diffusion.DENOISER_DROPOUT,
                              x0.shape)

  def loss(p):
    d, g = diffusion.training_losses(p, jnp.asarray(x0), item_emb, feats,
                                     key, sched)
    return jnp.mean(d) + e_loss * jnp.mean(g), (d, g)

  (_, (d_loss, gc_loss)), grads = jax.value_and_grad(loss, has_aux=True)(p)
  tx = optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)
  updates, _ = tx.update(grads, tx.init(p), p)
  stepped = optax.apply_updates(p, updates)
  inp, out = tmp_path / 'in.npz', tmp_path / 'out.npz'
  np.savez(inp, **{k: np.asarray(v) for k, v in p.items()}, x0=x0,
           item_emb=item_emb, feats=feats, t=np.asarray(t, np.int64),
           noise=np.asarray(noise), keep=np.asarray(keep), steps=5,
           noise_scale=0.1, noise_min=1e-4, noise_max=0.02, e_loss=e_loss,
           lr=lr)
  proc = subprocess.run(
      [str(REF_PYTHON), str(REPO / 'bench' / 'reference' /
                            'diffmm_denoiser_step.py'),
       '--src', str(SRC['diffmm']), str(inp), str(out)],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
      env={**os.environ, 'PYTHONPATH': str(REPO)})
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  ref = np.load(out)
  np.testing.assert_allclose(d_loss, ref['diff_loss'], rtol=2e-5)
  np.testing.assert_allclose(gc_loss, ref['gc_loss'], rtol=2e-5)
  for name in p:
    np.testing.assert_allclose(stepped[name], ref[name], rtol=1e-5,
                               atol=1e-7, err_msg=name)
  for params, which in ((p, 'before'), (stepped, 'after')):
    np.testing.assert_allclose(
        diffusion.reverse_pass(params, jnp.asarray(x0), sched),
        ref[f'reverse_{which}'], rtol=1e-4, atol=1e-6, err_msg=which)
