"""`config.model` name -> `ModelFamily`: every model the trainer can run."""

from __future__ import annotations

from mentor_jax import errors
from mentor_jax import family
from mentor_jax.models import bm3
from mentor_jax.models.diffmm import model as diffmm
from mentor_jax.models import diffmm_mrlib
from mentor_jax.models import dualgnn
from mentor_jax.models import freedom
from mentor_jax.models import lattice
from mentor_jax.models import layergcn
from mentor_jax.models import lgmrec
from mentor_jax.models import lightgcn
from mentor_jax.models import mfbpr
from mentor_jax.models import mmgcn
from mentor_jax.models.mmssl import training as mmssl
from mentor_jax.models import mmssl_mrlib
from mentor_jax.models import slmrec
from mentor_jax.models import vbpr
from mentor_jax.models.mentor import objective as mentor

FAMILIES: tuple[family.ModelFamily, ...] = (
    mentor.MENTOR,
    mfbpr.MFBPR_FAMILY,
    lightgcn.LIGHTGCN_FAMILY,
    freedom.FREEDOM_FAMILY,
    vbpr.VBPR_FAMILY,
    bm3.BM3_FAMILY,
    lgmrec.LGMREC_FAMILY,
    mmgcn.MMGCN_FAMILY,
    lattice.LATTICE_FAMILY,
    dualgnn.DUALGNN_FAMILY,
    layergcn.LAYERGCN_FAMILY,
    slmrec.SLMREC_FAMILY,
    mmssl.MMSSL_FAMILY,
    mmssl_mrlib.MMSSL_MRLIB_FAMILY,
    diffmm.DIFFMM_FAMILY,
    diffmm_mrlib.DIFFMM_MRLIB_FAMILY,
)


def names() -> list[str]:
  """The `config.model` values, sorted."""
  return sorted(f.name for f in FAMILIES)


def get(name: str) -> family.ModelFamily:
  for f in FAMILIES:
    if f.name == name:
      return f
  raise errors.ConfigError(f'config.model={name!r}: unknown model; expected '
                           f'one of {names()}')
