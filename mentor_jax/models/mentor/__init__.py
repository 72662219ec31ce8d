"""MENTOR (Xu et al., AAAI 2025), following the official code.

  model.py      the NNX module (encoders, fusion weights) and its forward pass
  losses.py     MENTOR's own loss terms (L2 forms, alignment, feature masking)
  objective.py  the static Hparams and paper-vs-code switches, the loss,
                scoring, and the `ModelFamily` (`objective.MENTOR`)
"""
