"""MMRec baselines in the shared framework: MF-BPR, LightGCN, FREEDOM."""

from mentor_jax.baselines.freedom import FREEDOM_FAMILY
from mentor_jax.baselines.lightgcn import LIGHTGCN_FAMILY
from mentor_jax.baselines.mfbpr import MFBPR_FAMILY

FAMILIES = (MFBPR_FAMILY, LIGHTGCN_FAMILY, FREEDOM_FAMILY)
