"""Our DiffMM / MMSSL settings beside the official codes' parsed flags.

The MMRec models compare against mmrec_settings.CELLS; the two official
codebases (HKUDS/DiffMM, HKUDS/MMSSL) read their settings from argparse, so
their side is the parser's namespace for the worker's command line
(`official_worker.py --args-only`). `differences` lists every setting both
sides read that differs; table3.py times nothing until it is empty.

Only flags the official training reads are mapped (MMSSL's parser has
dozens that main.py and Models.py never read, e.g. `g_rate`, which is not
`G_rate`, and `weight_decay`: its AdamW is built with torch's default).
"""

from __future__ import annotations

import ast
import math
from typing import Any, Callable

# Per codebase: our config key -> (official flag, official value -> ours).
_same: Callable[[Any], Any] = lambda v: v


def _first_of_list(text: str) -> float:
  return float(ast.literal_eval(text)[0])


def _len_of_list(text: str) -> int:
  return len(ast.literal_eval(text))


def _only_of_list(text: str) -> int:
  dims = ast.literal_eval(text)
  return int(dims[0]) if len(dims) == 1 else -1  # ours: one hidden layer


FLAGS: dict[str, dict[str, tuple[str, Callable[[Any], Any]]]] = {
    'diffmm': {  # Params.py
        'learning_rate': ('lr', _same),
        'train_batch_size': ('batch', _same),
        'embedding_size': ('latdim', _same),
        'n_layers': ('gnn_layer', _same),
        'reg_weight': ('reg', _same),
        'ssl_reg': ('ssl_reg', _same),
        'temp': ('temp', _same),
        'keep_rate': ('keepRate', _same),
        'denoise_hidden': ('dims', _only_of_list),
        'time_emb_dim': ('d_emb_size', _same),
        'diffusion_steps': ('steps', _same),
        'noise_scale': ('noise_scale', _same),
        'noise_min': ('noise_min', _same),
        'noise_max': ('noise_max', _same),
        'rebuild_k': ('rebuild_k', _same),
        'e_loss': ('e_loss', _same),
        'ris_lambda': ('ris_lambda', _same),
        'ris_adj_lambda': ('ris_adj_lambda', _same),
        'trans': ('trans', _same),
        'cl_method': ('cl_method', _same),
    },
    'mmssl': {  # utility/parser.py, as main.py and Models.py read it
        'learning_rate': ('lr', _same),
        'train_batch_size': ('batch_size', _same),
        'embedding_size': ('embed_size', _same),
        'd_lr': ('D_lr', _same),
        'reg_weight': ('regs', _first_of_list),
        'feat_reg_decay': ('feat_reg_decay', _same),
        'cl_rate': ('cl_rate', _same),
        'tau': ('tau', _same),
        'g_rate': ('G_rate', _same),
        'gp_rate': ('gp_rate', _same),
        'drop_rate': ('drop_rate', _same),
        'g_drop1': ('G_drop1', _same),
        'g_drop2': ('G_drop2', _same),
        'model_cat_rate': ('model_cat_rate', _same),
        'id_cat_rate': ('id_cat_rate', _same),
        'head_num': ('head_num', _same),
        'n_ui_layers': ('weight_size', _len_of_list),
        'real_data_tau': ('real_data_tau', _same),
        'ui_pre_scale': ('ui_pre_scale', _same),
        'm_topk_rate': ('m_topk_rate', _same),
        'log_log_scale': ('log_log_scale', _same),
    },
}


def _equal(ours: Any, theirs: Any) -> bool:
  try:
    return math.isclose(float(ours), float(theirs), rel_tol=1e-9,
                        abs_tol=0.0)
  except (TypeError, ValueError):
    return ours == theirs


def differences(codebase: str, config: Any,
                official_args: dict[str, Any]) -> list[str]:
  """Why our `config` and the official namespace differ ([] if same)."""
  problems = []
  for ours_key, (flag, convert) in FLAGS[codebase].items():
    if flag not in official_args:
      problems.append(f'{flag}: not in the official parser (wrong checkout?)')
      continue
    theirs = convert(official_args[flag])
    ours = config.get(ours_key)
    if not _equal(ours, theirs):
      problems.append(f'{ours_key}: ours {ours!r}, official --{flag} '
                      f'{official_args[flag]!r}')
  return problems
