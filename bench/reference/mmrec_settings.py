"""Our baseline settings as MMRec config keys: one fixed cell per model.

MMRec (enoche/MMRec) reads each model's hyper-parameters from
`src/configs/model/<Model>.yaml`, where most are grids (lists) that its
`quick_start` searches. The timing harness (mmrec_worker.py) runs ONE cell:
`CELLS[model]`, passed to MMRec's `Config` as `config_dict` overrides, which
take precedence over the yaml files. Those cells must be the settings our
families train with (mentor_jax/configs/baseline.py), or the comparison
compares different models; `from_ours` maps one of our configs to MMRec's
keys, and the test (tests/test_bench_reference_mmrec.py) and the driver
(table3.py, before it times anything) check that it equals `CELLS`.

Pure Python on purpose: the torch worker imports it without jax, and the
test imports it without torch.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

# Our `config.model` -> MMRec's model class (src/models/<lower>.py).
MMREC_MODEL = {
    'mfbpr': 'BPR',
    'lightgcn': 'LightGCN',
    'vbpr': 'VBPR',
    'mmgcn': 'MMGCN',
    'lattice': 'LATTICE',
    'bm3': 'BM3',
    'freedom': 'FREEDOM',
    'lgmrec': 'LGMRec',
    'dualgnn': 'DualGNN',
    'slmrec': 'SLMRec',
    'layergcn': 'LayerGCN',
}
MODELS = tuple(MMREC_MODEL)

# Trainer settings (overall.yaml) that change what is computed. `seed` is a
# list in overall.yaml (its own grid axis); a scalar here is one cell.
_COMMON_KEYS = ('learning_rate', 'learning_rate_scheduler', 'train_batch_size',
                'eval_batch_size', 'topk', 'seed', 'embedding_size')

# Per model: our key -> the MMRec key of the same name.
_MODEL_KEYS = {
    'mfbpr': ('reg_weight',),
    'lightgcn': ('reg_weight', 'n_layers'),
    'vbpr': ('reg_weight',),
    'mmgcn': ('reg_weight',),
    'lattice': ('reg_weight', 'knn_k', 'lambda_coeff', 'n_layers',
                'feat_embed_dim'),
    'bm3': ('n_layers', 'reg_weight', 'dropout', 'cl_weight'),
    'freedom': ('reg_weight', 'dropout', 'n_ui_layers', 'n_mm_layers', 'knn_k',
                'mm_image_weight', 'feat_embed_dim'),
    'lgmrec': ('cf_model', 'n_ui_layers', 'n_mm_layers', 'n_hyper_layer',
               'hyper_num', 'keep_rate', 'alpha', 'cl_weight', 'reg_weight',
               'feat_embed_dim'),
    'dualgnn': ('reg_weight', 'aggr_mode'),
    'layergcn': ('reg_weight', 'n_layers', 'dropout'),
    'slmrec': ('temp', 'ssl_temp', 'ssl_alpha', 'weight_decay'),
}


def _weight_size(config: Mapping[str, Any]) -> list[int]:
  # LATTICE derives its number of user-item layers from len(weight_size);
  # the sizes themselves are read by its NGCF branch only (cf_model 'ngcf').
  return [int(config['embedding_size'])] * int(config['n_ui_layers'])


# Per model: our key -> (MMRec key, value from our whole config).
_DERIVED: dict[str, dict[str, tuple[str, Callable[..., Any]]]] = {
    'lattice': {'n_ui_layers': ('weight_size', _weight_size)},
    # SLMRec reads its own names for these (recdim, layer_num).
    'slmrec': {'embedding_size': ('recdim', lambda c: c['embedding_size']),
               'n_layers': ('layer_num', lambda c: c['n_layers'])},
}

# Keys of a model's yaml grid that MMRec's code never reads, with the one
# value the worker pins (it runs one cell): no key of ours maps to them.
MMREC_NO_OPS = {
    'slmrec': {'reg': 1e-4},  # SLMRec.yaml's `reg` grid.
}

# Keys of our families that have no MMRec counterpart, with the value that
# is MMRec's behaviour (None: any value gives the same results).
OURS_ONLY = {
    # LGMRec's full_sort_predict runs forward(), whose hyperedge assignments
    # are Gumbel-softmax samples; score_gumbel=True scores the same way.
    'lgmrec': {'score_gumbel': True},
    # Engineering: LATTICE's item graph is built in blocks of rows.
    'lattice': {'graph_block_size': None},
    # DualGNN: MMRec's in-place user fusion, its hard-coded k = 40, and the
    # user graph's lists (ours: ties by id; a named MMRec file: torch's).
    'dualgnn': {'user_fusion': 'mmrec', 'user_k': 40,
                'user_graph_file': None},
}

# What MMRec's `full_sort_predict` ranks with: a clean forward pass with the
# current parameters ('recompute'), except MMGCN, whose `self.result` is the
# last training forward's output ('last_step'). Our `eval_embeddings`.
EVAL_EMBEDDINGS = {m: 'recompute' for m in MODELS}
EVAL_EMBEDDINGS['mmgcn'] = 'last_step'
EVAL_EMBEDDINGS['dualgnn'] = 'last_step'  # result_embed of the last step.
EVAL_EMBEDDINGS['slmrec'] = 'last_step'  # all_users/all_items of the step.

# overall.yaml as our trainer sets it (configs/baseline.py), one cell.
_OVERALL = {
    'learning_rate': 1e-3,
    'learning_rate_scheduler': [1.0, 50],
    'train_batch_size': 2048,
    'eval_batch_size': 4096,
    'topk': [5, 10, 20, 50],
    'seed': 999,
    'embedding_size': 64,
}

# The overrides mmrec_worker.py passes to MMRec's Config, per model. Written
# out (not computed from our configs) so that a change on either side shows
# up as a failing test rather than silently moving both.
CELLS = {
    'mfbpr': dict(_OVERALL, reg_weight=1e-3),
    'lightgcn': dict(_OVERALL, reg_weight=1e-4, n_layers=3),
    'vbpr': dict(_OVERALL, reg_weight=1e-3),
    'mmgcn': dict(_OVERALL, reg_weight=1e-3),
    'lattice': dict(_OVERALL, learning_rate_scheduler=[0.96, 50],
                    reg_weight=1e-4, knn_k=10, lambda_coeff=0.9, n_layers=1,
                    feat_embed_dim=64, weight_size=[64, 64]),
    'bm3': dict(_OVERALL, n_layers=1, reg_weight=0.1, dropout=0.3,
                cl_weight=2.0),
    'freedom': dict(_OVERALL, reg_weight=1e-3, dropout=0.8, n_ui_layers=2,
                    n_mm_layers=1, knn_k=10, mm_image_weight=0.1,
                    feat_embed_dim=64),
    'lgmrec': dict(_OVERALL, cf_model='lightgcn', n_ui_layers=2,
                   n_mm_layers=2, n_hyper_layer=1, hyper_num=4,
                   keep_rate=0.5, alpha=0.3, cl_weight=1e-4,
                   reg_weight=1e-6, feat_embed_dim=64),
    'layergcn': dict(_OVERALL, reg_weight=1e-2, n_layers=4, dropout=0.0),
    # DualGNN.yaml's first cell: its grid includes the learning rate.
    'dualgnn': dict(_OVERALL, learning_rate=0.1, reg_weight=0.1,
                    aggr_mode='add'),
    'slmrec': dict(_OVERALL, learning_rate=1e-4, recdim=64, layer_num=3,
                   temp=0.2, ssl_temp=0.1, ssl_alpha=0.01, weight_decay=1e-4,
                   reg=1e-4),
}

# MMRec's dataset yaml (configs/dataset/baby.yaml and the others), for any
# dataset name: the worker lays every dataset out under these file names.
DATASET_KEYS = {
    'USER_ID_FIELD': 'userID',
    'ITEM_ID_FIELD': 'itemID',
    'TIME_FIELD': 'timestamp',
    'field_separator': '\t',
    'filter_out_cod_start_users': True,
    'vision_feature_file': 'image_feat.npy',
    'text_feature_file': 'text_feat.npy',
    # Read by DualGNN only (the worker must lay the file out for it:
    # data_prep.user_graph.to_mmrec_dict of cooccurrence_neighbours).
    'user_graph_dict_file': 'user_graph_dict.npy',
}


def check_model(model: str) -> str:
  if model not in MMREC_MODEL:
    raise ValueError(f'model {model!r}: expected one of {list(MODELS)} '
                     '(our config.model names)')
  return model


def mapped_keys(model: str) -> tuple[str, ...]:
  """Our config keys that `from_ours` reads for `model`."""
  check_model(model)
  return (_COMMON_KEYS + _MODEL_KEYS[model]
          + tuple(_DERIVED.get(model, {})))


def _plain(value: Any) -> Any:
  # ml_collections keeps tuples; MMRec's yaml gives lists.
  if isinstance(value, (tuple, list)):
    return [_plain(v) for v in value]
  return value


def from_ours(model: str, config: Mapping[str, Any]) -> dict[str, Any]:
  """MMRec `config_dict` overrides equal to our `config` for `model`.

  Args:
    model: our model name (a key of MMREC_MODEL).
    config: our resolved config (an ml_collections.ConfigDict or a dict).

  Raises:
    KeyError: `config` lacks a key the mapping needs (named).
  """
  check_model(model)
  out = {}
  for key in _COMMON_KEYS + _MODEL_KEYS[model]:
    if key not in config:
      raise KeyError(f'our {model} config has no {key!r} (mapped to '
                     f'MMRec {MMREC_MODEL[model]}.{key})')
    out[key] = _plain(config[key])
  for key, (mmrec_key, fn) in _DERIVED.get(model, {}).items():
    if key not in config:
      raise KeyError(f'our {model} config has no {key!r} (mapped to '
                     f'MMRec {MMREC_MODEL[model]}.{mmrec_key})')
    out[mmrec_key] = fn(config)
  out.update(MMREC_NO_OPS.get(model, {}))
  return out


def unmapped_keys(model: str, family_keys: set[str] | frozenset[str]
                  ) -> list[str]:
  """Keys our family reads that neither map to MMRec nor are OURS_ONLY."""
  known = set(mapped_keys(model)) | set(OURS_ONLY.get(model, {}))
  return sorted(set(family_keys) - known)


def differences(model: str, overrides: Mapping[str, Any]) -> list[str]:
  """Where `overrides` (e.g. `from_ours(...)`) differs from CELLS[model]."""
  cell = CELLS[check_model(model)]
  out = []
  for key in sorted(set(cell) | set(overrides)):
    if key not in overrides:
      out.append(f'{key}: MMRec cell {cell[key]!r}, ours has none')
    elif key not in cell:
      out.append(f'{key}: ours {overrides[key]!r}, not in the MMRec cell')
    elif overrides[key] != cell[key]:
      out.append(f'{key}: ours {overrides[key]!r} != MMRec cell '
                 f'{cell[key]!r}')
  return out
