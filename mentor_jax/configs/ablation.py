"""The ablation variants of the paper (Table 2, Fig. 3) as presets.

  python -m mentor_jax.train --config configs/ablation.py:tiktok,mentor_fg

The argument is '<dataset>,<variant>' or '<variant>' (dataset 'small');
dataset names a configs/<name>.py. Variants (all on the official code's
formulation, so MENTOR_f trains exactly as MENTOR: the code's feature
masking has no gradient; add the paper's switches to change that):

  mentor       the full model (no change)
  mentor_f     no feature masking          (mask_weight_f = 0)
  mentor_g     no graph perturbation       (mask_weight_g = 0: light model)
  mentor_fg    neither (the light model)   (both 0)
  mentor_base  no alignment                (align_levels = ())
  mentor_l1    alignment level L1 only     (align_levels = (1,))
  mentor_l2    levels L1 and L2            (align_levels = (1, 2))
  paper        the paper's formulation     (configs/paper.py)
"""

import importlib

import ml_collections

VARIANTS: dict[str, dict[str, object]] = {
    'mentor': {},
    'mentor_f': {'mask_weight_f': 0.0},
    'mentor_g': {'mask_weight_g': 0.0},
    'mentor_fg': {'mask_weight_f': 0.0, 'mask_weight_g': 0.0},
    'mentor_base': {'align_levels': ()},
    # Fig. 3: L1 = standard modality alignment, L2 adds ID indirect guidance;
    # the full model adds L3 (ID direct guidance).
    'mentor_l1': {'align_levels': (1,)},
    'mentor_l2': {'align_levels': (1, 2)},
}


def apply_variant(config: ml_collections.ConfigDict,
                  variant: str) -> ml_collections.ConfigDict:
  """Applies ablation `variant` to `config` in place and returns it."""
  variant = variant.lower()
  if variant == 'paper':
    from mentor_jax.configs import paper  # pylint: disable=g-import-not-at-top
    config = paper.apply_paper(config)
    config.variant = variant
    return config
  if variant not in VARIANTS:
    raise ValueError(f'unknown ablation variant {variant!r}; allowed: '
                     f'{tuple(VARIANTS) + ("paper",)}')
  for key, value in VARIANTS[variant].items():
    config[key] = value
  config.variant = variant
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = (arg or 'mentor').split(',')
  dataset, variant = (parts if len(parts) == 2 else ('small', parts[0]))
  module = importlib.import_module(f'mentor_jax.configs.{dataset}')
  return apply_variant(module.get_config(), variant)
