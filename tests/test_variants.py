"""Code-vs-paper switches, ablation presets, RQ3 analysis and the grid."""

from __future__ import annotations

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import ablation
from configs import paper
from configs import tiny
from mentor_jax import analysis
from mentor_jax import data as data_lib
from mentor_jax import grid as grid_lib
from mentor_jax.models.mentor import losses
from mentor_jax.models.mentor import model as model_lib
from mentor_jax.models.mentor import objective
from mentor_jax.ops import graph
from mentor_jax.ops import losses as ops_losses
from mentor_jax.ops import sparse

KEY = jax.random.PRNGKey(3)


@pytest.fixture(scope='module')
def tiny_data(tiny_dataset):
  return data_lib.load_dataset(tiny_dataset)


def _config(tiny_dataset, **overrides):
  config = tiny.get_config()
  config.data_npz = str(tiny_dataset)
  config.data_source = ''
  for key, value in overrides.items():
    config[key] = value
  return config


def _setup(tiny_data, config, model=None):
  hp = objective.Hparams.from_config(
      config, spmm_kernel='csr',
      max_row_len=data_lib.max_row_length(tiny_data.split('train')[0]))
  data = data_lib.to_device(tiny_data, config.knn_k)
  model = model or objective.create_model(config, tiny_data)
  batches = data_lib.epoch_batches(jax.random.PRNGKey(0), data,
                                   hp.batch_size, hp.max_row_len)
  batch = jax.tree.map(lambda x: x[0], batches)
  return model, data, batch, hp


@functools.partial(jax.jit, static_argnames=('graphdef', 'hp'))
def _jit_parts(params, rest, data, batch, *, graphdef, hp):
  model = nnx.merge(graphdef, params, rest)
  return objective.mentor_loss(model, data, batch, KEY, hp)[1][0]


@functools.partial(jax.jit, static_argnames=('graphdef', 'hp', 'name'))
def _jit_part_grad(params, rest, data, batch, *, graphdef, hp, name):
  def f(p):
    model = nnx.merge(graphdef, p, rest)
    return objective.mentor_loss(model, data, batch, KEY, hp)[1][0][name]
  return jax.grad(f)(params)


# Compiled once per (model structure, Hparams): eager dispatch of the loss
# compiles every primitive separately and is several times slower.
def _parts(model, data, batch, hp):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  parts = _jit_parts(params, rest, data, batch, graphdef=graphdef, hp=hp)
  return {k: float(v) for k, v in parts.items()}


def _part_grad(model, data, batch, hp, name):
  """Gradient of one logged loss part w.r.t. every parameter."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return _jit_part_grad(params, rest, data, batch, graphdef=graphdef, hp=hp,
                        name=name)


def _norm(tree) -> float:
  return float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))


def _copy_params(dst: model_lib.Mentor, src: model_lib.Mentor) -> None:
  """Gives `dst` the values of every parameter the two models share."""
  for name in dst.encoders:
    if name in src.encoders:
      for f in ('preference', 'w1', 'b1', 'w2', 'b2'):
        getattr(dst.encoders[name], f)[...] = getattr(src.encoders[name],
                                                      f)[...]
  for f in ('id_feat', 'weight_u', 'mask_w', 'mask_b'):
    if f in vars(dst) and f in vars(src):
      getattr(dst, f)[...] = getattr(src, f)[...]


def _compare(tiny_data, tiny_dataset, changed, **switch):
  """Parts with and without `switch` (same parameters); checks which move."""
  base = _setup(tiny_data, _config(tiny_dataset))
  on = _setup(tiny_data, _config(tiny_dataset, **switch), model=base[0])
  p0, p1 = _parts(*base), _parts(*on)
  assert set(p0) == set(p1)
  for k in p0:
    if k in changed:
      assert not math.isclose(p0[k], p1[k], rel_tol=1e-4), (k, p0, p1)
    else:  # Float tolerance: XLA may fuse the two programs differently.
      assert math.isclose(p0[k], p1[k], rel_tol=1e-6), (k, p0, p1)
  return base, on, p0, p1


# ---------------------------------------------------------------------------
# One test per switch.


def test_align_stats_changes_only_alignment(tiny_data, tiny_dataset):
  _compare(tiny_data, tiny_dataset, {'align'}, align_stats='per_node')


def test_align_dispersion_changes_only_alignment(tiny_data, tiny_dataset):
  _compare(tiny_data, tiny_dataset, {'align'}, align_dispersion='std')


def test_align_levels_use_paper_numbering(tiny_data, tiny_dataset):
  (model, data, batch, hp), _, _, p1 = _compare(
      tiny_data, tiny_dataset, {'align'}, align_levels=(1, 2))
  v = model_lib.build_views(objective.run_forward(
      model, data, jax.random.split(KEY)[0], hp))
  cat = lambda a, b: jnp.concatenate([a, b])
  # Paper L1 = (v, t) = code level 4; L2 = (id, v) + (id, t) = code level 2.
  want = 0.1 * losses.align_loss(
      cat(v.fused_u, v.fused_i), cat(v.ident_u, v.ident_i),
      cat(v.visual_u, v.visual_i), cat(v.textual_u, v.textual_i),
      levels=(2, 4))
  np.testing.assert_allclose(p1['align'], want, rtol=1e-6)


def test_feature_mask_gradient_is_real_and_stops_the_dropout_view(
    tiny_data, tiny_dataset):
  base, on, p0, p1 = _compare(tiny_data, tiny_dataset, set(),
                              feature_mask='gradient')
  assert math.isclose(p0['mask_f'], p1['mask_f'], rel_tol=1e-6)  # Same value: same masks, same MLP.
  assert _norm(_part_grad(*base, 'mask_f')) == 0.0
  g = _part_grad(*on, 'mask_f')
  assert _norm(g['mask_w']) > 0  # The MLP (predictor) side learns ...
  assert _norm(g['encoders']['v']) > 0  # ... and so does R through it.
  # Where the stop-gradient sits: with dropout 0 the dropout view is R
  # itself, so the gradient w.r.t. R must be that of
  # 1 - cos(stop_gradient(R), mlp(R)), not of 1 - cos(R, mlp(R)).
  model, data, _, hp = on
  hp = objective.Hparams.from_config(_config(
      tiny_dataset, feature_mask='gradient', dropout=0.0), spmm_kernel='csr')
  v = model_lib.build_views(objective.run_forward(model, data, KEY, hp))
  mlp = lambda r: r @ model.mask_w[...] + model.mask_b[...]
  cos = lambda a, b: jnp.mean(ops_losses.cosine_similarity(a, b))
  got = jax.grad(lambda r: objective._feature_mask(
      model, v._replace(fused_u=r), KEY, hp))(v.fused_u)
  want = jax.grad(lambda r: -cos(jax.lax.stop_gradient(r), mlp(r)))(
      v.fused_u)
  both = jax.grad(lambda r: -cos(r, mlp(r)))(v.fused_u)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
  assert not np.allclose(got, both, rtol=1e-3, atol=1e-7)


def test_bpr_log_base_changes_only_bpr(tiny_data, tiny_dataset):
  _, _, p0, p1 = _compare(tiny_data, tiny_dataset, {'bpr'},
                          bpr_log_base=math.e)
  np.testing.assert_allclose(p1['bpr'], p0['bpr'] * math.log(2), rtol=1e-6)


def test_reg_form_paper_changes_only_reg(tiny_data, tiny_dataset):
  base, on, p0, p1 = _compare(tiny_data, tiny_dataset, {'reg'},
                              reg_form='paper')
  model, _, batch, hp = on
  m = np.asarray(batch.mask, bool)
  u = np.asarray(batch.users)[m]
  pv = np.asarray(model.encoders['v'].preference[...])[u]
  pt = np.asarray(model.encoders['t'].preference[...])[u]
  want = 1e-3 * np.mean(np.sum(pv**2, 1) + np.sum(pt**2, 1))
  np.testing.assert_allclose(p1['reg'], want, rtol=1e-5)
  assert _norm(_part_grad(*on, 'reg')['weight_u']) == 0.0
  assert _norm(_part_grad(*base, 'reg')['weight_u']) > 0


def test_noise_uniform_changes_only_the_contrastive_term(tiny_data,
                                                        tiny_dataset):
  _compare(tiny_data, tiny_dataset, {'nce_g'}, noise='uniform')
  h = jnp.zeros((20, 2, 8)) - 5.0
  delta = model_lib.perturb_uniform(h, KEY, 1.0) - h
  assert float(delta.min()) >= 0 and float(delta.max()) < 1
  assert float(jnp.std(delta)) > 0.2  # Per entry, not one shared shift.


def test_nce_views_per_modality_changes_only_the_contrastive_term(
    tiny_data, tiny_dataset):
  _compare(tiny_data, tiny_dataset, {'nce_g'}, nce_views='per_modality')


def test_perturbation_own_encoders(tiny_data, tiny_dataset):
  sep = _setup(tiny_data, _config(tiny_dataset))
  config = _config(tiny_dataset, perturbation='own_encoders')
  own_model = objective.create_model(config, tiny_data)
  assert not own_model.perturbed  # No separate noise encoders.
  _copy_params(own_model, sep[0])
  own = _setup(tiny_data, config, model=own_model)
  p0, p1 = _parts(*sep), _parts(*own)
  for k in ('bpr', 'reg', 'align', 'mask_f'):
    assert math.isclose(p0[k], p1[k], rel_tol=1e-6), k
  assert p0['nce_g'] != p1['nce_g'] and np.isfinite(p1['nce_g'])
  # The InfoNCE now trains the model's own v and t encoders.
  assert _norm(_part_grad(*sep, 'nce_g')['encoders']['v']) == 0.0
  g = _part_grad(*own, 'nce_g')
  assert _norm(g['encoders']['v']) > 0 and _norm(g['encoders']['t']) > 0
  assert _norm(g['encoders']['id']) == 0.0


def test_fusion_alpha(tiny_data, tiny_dataset):
  config = _config(tiny_dataset, fusion='alpha')
  model, data, batch, hp = _setup(tiny_data, config)
  assert 'weight_u' not in vars(model)
  np.testing.assert_allclose(model.alpha[...], 0.5)
  emb = objective.run_forward(model, data, KEY, hp)
  v = model_lib.build_views(emb)
  u, i = emb.users, emb.items
  np.testing.assert_allclose(v.fused_u, 0.5 * jnp.concatenate(
      [u[:, 0], u[:, 1]], 1), rtol=1e-6)
  np.testing.assert_allclose(v.fused_i, 0.5 * jnp.concatenate(
      [i[:, 0], i[:, 1]], 1), rtol=1e-6)
  assert _norm(_part_grad(model, data, batch, hp, 'bpr')['alpha']) > 0
  # Every other parameter starts as in the per-user model.
  ref = objective.create_model(_config(tiny_dataset), tiny_data)
  np.testing.assert_array_equal(model.id_feat[...], ref.id_feat[...])
  np.testing.assert_array_equal(model.mask_w[...], ref.mask_w[...])


@pytest.mark.parametrize('kernel', sparse.KERNELS)
def test_mm_aggregation_sum_and_power(kernel):
  """item_graph (spmm on the device-built S) against gathers, every kernel,
  values and gradients."""
  rng = np.random.default_rng(0)
  n, k = 12, 3
  knn_v = jnp.asarray(rng.integers(0, n, (n, k)), jnp.int32)
  knn_t = jnp.asarray(rng.integers(0, n, (n, k)), jnp.int32)
  x = jnp.asarray(rng.standard_normal((n, 4)), jnp.float32)
  s = lambda y: graph.knn_propagate(y, knn_v, knn_t, k=k, n_layers=1)
  kw = dict(image_weight=0.1, n_layers=2, kernel=kernel)
  item_graph = lambda y, agg: graph.item_graph(y, knn_v, knn_t,
                                               aggregation=agg, **kw)
  np.testing.assert_allclose(item_graph(x, 'power'), s(s(x)), rtol=1e-5)
  np.testing.assert_allclose(item_graph(x, 'sum'), s(x) + s(s(x)), rtol=1e-5,
                             atol=1e-6)
  g = jnp.asarray(rng.standard_normal((n, 4)), jnp.float32)
  np.testing.assert_allclose(
      jax.grad(lambda y: jnp.sum(g * item_graph(y, 'sum')))(x),
      jax.grad(lambda y: jnp.sum(g * (s(y) + s(s(y)))))(x),
      rtol=1e-5, atol=1e-6)
  kw['n_layers'] = 1
  np.testing.assert_allclose(  # L = 1: the two readings agree.
      item_graph(x, 'sum'), item_graph(x, 'power'), rtol=1e-6)


def test_knn_k_and_mm_layers_change_the_item_embeddings(tiny_data,
                                                         tiny_dataset):
  ref = _setup(tiny_data, _config(tiny_dataset))
  emb0 = objective.run_forward(ref[0], ref[1], KEY, ref[3])
  for switch in ({'knn_k': 20}, {'n_mm_layers': 2},
                 {'n_mm_layers': 2, 'mm_aggregation': 'sum'}):
    model, data, _, hp = _setup(tiny_data, _config(tiny_dataset, **switch),
                                model=ref[0])
    emb = objective.run_forward(model, data, KEY, hp)
    np.testing.assert_array_equal(emb.users, emb0.users)  # UI graph only.
    assert not np.allclose(emb.items, emb0.items), switch
  assert data_lib.to_device(tiny_data, 40).knn_v.shape[1] == 40


@pytest.mark.parametrize('key,value', [
    ('fusion', 'beta'), ('align_stats', 'node'), ('feature_mask', 'on'),
    ('perturbation', 'own'), ('noise', 'gauss'), ('nce_views', 'x'),
    ('mm_aggregation', 'mean'), ('reg_form', 'l2'), ('align_levels', (4,)),
    ('bpr_log_base', 1.0)])
def test_bad_switch_values_name_the_key(tiny_dataset, key, value):
  config = _config(tiny_dataset, **{key: value})
  with pytest.raises(ValueError, match=f'config.{key}'):
    objective.Hparams.from_config(config)


# ---------------------------------------------------------------------------
# Ablation presets and the paper config.


@pytest.mark.parametrize('variant,absent', [
    ('mentor', set()), ('mentor_f', {'mask_f'}), ('mentor_g', {'nce_g'}),
    ('mentor_fg', {'mask_f', 'nce_g'}), ('mentor_base', {'align'})])
def test_ablation_presets_remove_their_terms(tiny_data, tiny_dataset,
                                             variant, absent):
  config = ablation.apply_variant(_config(tiny_dataset), variant)
  parts = _parts(*_setup(tiny_data, config))
  assert set(parts) == {'bpr', 'reg', 'align', 'mask_f', 'nce_g'} - absent


def test_alignment_level_presets(tiny_data, tiny_dataset):
  full = _setup(tiny_data, _config(tiny_dataset))
  got = {}
  for variant in ('mentor_l1', 'mentor_l2'):
    config = ablation.apply_variant(_config(tiny_dataset), variant)
    got[variant] = _parts(*_setup(tiny_data, config, model=full[0]))['align']
  assert config.align_levels == (1, 2)
  p = _parts(*full)
  assert 0 < got['mentor_l1'] < got['mentor_l2'] < p['align']


def _trace(model, data, batch, hp):
  """Traces the loss afresh (a new closure: no jit cache), compiles nothing."""
  jax.eval_shape(lambda: objective.mentor_loss(model, data, batch, KEY, hp))


def test_light_variant_runs_no_perturbed_encoder(tiny_data, tiny_dataset,
                                                 monkeypatch):
  widths = []
  real = model_lib.propagate
  monkeypatch.setattr(model_lib, 'propagate', lambda x0, *a, **kw: (
      widths.append(x0.shape[1]), real(x0, *a, **kw))[1])
  count = lambda m: sum(x.size for x in jax.tree.leaves(
      nnx.state(m, nnx.Param)))
  sizes = {}
  for variant in ('mentor', 'mentor_fg', 'mentor_g'):
    config = ablation.apply_variant(_config(tiny_dataset), variant)
    model, data, batch, hp = _setup(tiny_data, config)
    sizes[variant] = count(model)
    widths.clear()
    _trace(model, data, batch, hp)
    assert widths == [7 if variant == 'mentor' else 3], variant
  assert sizes['mentor_fg'] == sizes['mentor_g'] < sizes['mentor']
  # The paper's perturbation adds compute but no parameters; its light
  # variant skips the extra passes too.
  for g, width in ((1e-4, 7), (0.0, 3)):
    config = _config(tiny_dataset, perturbation='own_encoders',
                     mask_weight_g=g)
    model, data, batch, hp = _setup(tiny_data, config)
    assert count(model) == sizes['mentor_g']
    widths.clear()
    _trace(model, data, batch, hp)
    assert widths == [width]


def test_paper_config_trains_one_step(tiny_data, tiny_dataset):
  config = paper.apply_paper(_config(tiny_dataset))
  assert config.knn_k == 40 and config.fusion == 'alpha'
  model, data, batch, hp = _setup(tiny_data, config)
  parts = _parts(model, data, batch, hp)
  assert set(parts) == {'bpr', 'reg', 'align', 'mask_f', 'nce_g'}
  assert all(np.isfinite(v) for v in parts.values())


# ---------------------------------------------------------------------------
# RQ3 analysis and the grid runner.


def test_modality_distance_hand_made():
  v = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
  t = np.array([[0.0, 5.0], [0.0, 3.0], [-3.0, -4.0]])
  # Normalized: (1,0)-(0,1) -> sqrt 2; (0,1)-(0,1) -> 0; opposite -> 2.
  want = (math.sqrt(2) + 0 + 2) / 3
  assert analysis.modality_distance(v, t) == pytest.approx(want)
  assert analysis.modality_distance(v, v) == 0.0


def test_analysis_on_an_untrained_model(tiny_data, tiny_dataset):
  model, data, _, hp = _setup(tiny_data, _config(tiny_dataset))
  mods = analysis.item_modalities(model, data, hp)
  report = analysis.analyze(mods, n_items=25, seed=0)
  assert len(set(report['items'].tolist())) == 25
  d = report['distance']['visual-textual']
  assert 0 < d <= 2
  assert d == pytest.approx(analysis.modality_distance(
      mods['visual'][report['items']], mods['textual'][report['items']]))


def test_grid_runner_two_cells(tiny_dataset, tmp_path):
  config = _config(tiny_dataset, epochs=1)
  assert grid_lib.parse_grid(['temp=0.2,0.4', 'mask_weight_g=1e-4'],
                             config) == {'temp': [0.2, 0.4],
                                         'mask_weight_g': [1e-4]}
  with pytest.raises(ValueError, match='no key'):
    grid_lib.parse_grid(['tmp=1'], config)
  # Cells over the seed share one compiled epoch (the seed is not static),
  # which keeps this test fast; any other key works the same way.
  grid = grid_lib.parse_grid(['seed=1,2'], config)
  summary = grid_lib.run_grid(config, tmp_path, grid)
  assert [c['name'] for c in summary['cells']] == ['seed=1', 'seed=2']
  for cell in summary['cells']:
    assert (tmp_path / cell['name'] / 'result.json').exists()
    cfg = json.loads((tmp_path / cell['name'] / 'config.json').read_text())
    assert cfg['seed'] == cell['cell']['seed']
  saved = json.loads((tmp_path / 'grid_summary.json').read_text())
  assert saved['selected_by_valid'] in ('seed=1', 'seed=2')
  md = (tmp_path / 'grid_summary.md').read_text()
  assert 'test (official)' in md and 'Selected by validation' in md
  assert grid_lib.config_grid(tiny.get_config()) == {
      'mask_weight_g': [1e-4, 1e-3], 'temp': [0.2, 0.4, 0.6]}
