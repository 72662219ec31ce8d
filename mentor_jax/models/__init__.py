"""The model families, one module (or folder) each, side by side.

MENTOR (`mentor/`) and MMRec's baselines (`mfbpr`, `lightgcn`, `freedom`).
Each defines a `family.ModelFamily`; `registry.py` lists them. A model
module imports the shared operators (`mentor_jax.ops`), the data layer and
`family`, never another model.
"""
