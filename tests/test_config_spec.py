"""One validation layer for configs (issue 12 §2): every key declared."""

import importlib
import pathlib
import subprocess
import sys

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest

from configs import tiny
from mentor_jax import config_spec
from mentor_jax import errors
from mentor_jax import registry
from mentor_jax import train
from mentor_jax import console

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(**overrides):
  config = tiny.get_config()
  for k, v in overrides.items():
    config[k] = v
  return config


# Each case was seen on the tiny config: a crash deep inside, or silence.
@pytest.mark.parametrize('key,value,allowed', [
    ('checkpoint_every_epochs', 0, 'integers >= 1'),
    ('log_every_epochs', 0, 'integers >= 1'),
    ('train_batch_size', 0, 'integers >= 1'),
    ('epochs', 0, 'integers >= 1'),
    ('topk', (0, 10, 20), 'ints >= 1'),
    ('topk', (10, 10), 'distinct'),
    ('learning_rate', -1.0, 'finite numbers > 0'),
    ('learning_rate', float('inf'), 'finite numbers > 0'),
    ('dropout', 1.5, 'finite numbers >= 0 and < 1'),
    ('embedding_size', 32, 'one of (64,)'),  # MENTOR's width is fixed.
    ('temp', 0.0, '> 0'),
    ('fusion', 'beta', "one of ('per_user', 'alpha')"),
    ('spmm_kernel', 'dense', "one of ('auto'"),
    ('mesh_shape', 'all', "'auto', n >= 1 or (n,)"),
    ('align_levels', (4,), 'values from (1, 2, 3)'),
    ('seed', -3, 'integers >= 0'),
    ('eval_embeddings', 'best', "one of ('last_step', 'recompute')"),
])
def test_bad_values_name_key_value_and_rule(key, value, allowed):
  with pytest.raises(errors.ConfigError) as e:
    train.check_config(_config(**{key: value}))
  message = str(e.value)
  assert message.startswith(f'config.{key}={value!r}: allowed values are ')
  assert allowed in message


def test_valid_metric_must_be_computed():
  with pytest.raises(errors.ConfigError, match=r"config.valid_metric="
                     r"'recall@10'.*'recall@5', 'recall@20'"):
    train.check_config(_config(topk=(5, 20)))
  train.check_config(_config(topk=(5, 20), valid_metric='ndcg@5'))


def test_log_lines_follow_topk():
  assert console.log_ks((5, 10, 20, 50)) == (10, 20)
  assert console.log_ks((5, 10)) == (5, 10)  # Used to crash on @20.
  assert console.log_ks((50,)) == (50,)


def test_a_key_the_model_ignores_is_refused():
  config = _config()
  config.model = 'lightgcn'
  config.n_layers = 3
  with pytest.raises(errors.ConfigError,
                     match=r"config.\w+: not a setting .* model 'lightgcn', "
                     'so it would be ignored. Its settings: embedding_size, '
                     'n_layers, reg_weight'):
    train.check_config(config)


def test_unknown_model_is_a_config_error():
  with pytest.raises(errors.ConfigError, match="config.model='nope'"):
    train.check_config(_config(model='nope'))


def test_grid_values_are_checked_like_the_key():
  config = _config()
  config.grid.temp = (0.2, -0.4)
  with pytest.raises(errors.ConfigError, match=r'config.grid.temp=-0.4'):
    train.check_config(config)


def _shipped_configs():
  out = []
  for path in sorted((REPO / 'configs').glob('*.py')):
    name = path.stem
    if name in ('__init__',):
      continue
    module = importlib.import_module(f'configs.{name}')
    if name == 'baseline':
      out += [(f'baseline:{m},tiktok', module.get_config(f'{m},tiktok'))
              for m in registry.names() if m != 'mentor']
    elif name == 'ablation':
      out += [(f'ablation:{v}', module.get_config(v))
              for v in module.VARIANTS]
    else:
      out.append((name, module.get_config()))
  return out


@pytest.mark.parametrize('name,config', _shipped_configs(),
                         ids=lambda x: x if isinstance(x, str) else '')
def test_every_shipped_config_is_valid(name, config):
  del name
  train.check_config(config)


def test_every_family_declares_the_keys_its_hparams_read():
  import dataclasses  # pylint: disable=g-import-not-at-top
  for family in registry.FAMILIES:
    hparams_cls = family.hparams
    fields = {f.name for f in dataclasses.fields(hparams_cls)}
    # Derived by the trainer, or read from another key (train_batch_size,
    # learning_rate_scheduler).
    derived = {'batch_size', 'max_row_len', 'steps_per_epoch', 'lr_decay',
               'lr_decay_every'}
    missing = fields - set(family.config_spec) - set(
        config_spec.TRAINER) - derived
    assert not missing, (family.name, missing)


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.tuples(st.integers(-5, 100)), st.lists(st.integers(-5, 100),
                                              max_size=4).map(tuple))


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(tiny.get_config().keys())), value=_VALUES)
def test_any_value_gives_a_valid_config_or_a_config_error(key, value):
  config = dict(_config().items())  # A plain mapping: any type can go in.
  config[key] = value
  family = registry.get('mentor')
  try:
    config_spec.validate(config, family.config_spec, 'mentor')
  except errors.ConfigError as e:
    assert str(e).startswith(f'config.{key}') or 'valid_metric' in str(e)


def test_cli_prints_one_error_line_not_a_traceback(tmp_path):
  p = subprocess.run(
      [sys.executable, '-m', 'mentor_jax.train', '--config',
       str(REPO / 'configs' / 'tiny.py'), '--workdir', str(tmp_path / 'w'),
       '--config.dropout=1.5'],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert p.returncode == errors.ConfigError.exit_code, p.stderr[-2000:]
  assert 'Traceback' not in p.stderr
  assert p.stderr.strip().splitlines()[-1] == (
      'error: config.dropout=1.5: allowed values are finite numbers >= 0 '
      'and < 1')
  assert not (tmp_path / 'w' / 'config.json').exists()
  debug = subprocess.run(
      [sys.executable, '-m', 'mentor_jax.train', '--config',
       str(REPO / 'configs' / 'tiny.py'), '--workdir', str(tmp_path / 'w'),
       '--config.dropout=1.5', '--debug'],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert 'Traceback' in debug.stderr and 'ConfigError' in debug.stderr
