"""MMSSL (Wei et al., WWW 2023), following the official HKUDS/MMSSL code.

  model.py     the settings, parameters, graphs, forward pass and the
               discriminator (with its WGAN-GP loss)
  training.py  the generator's loss, the two-optimizer step with the
               per-batch modality-graph rebuild, the official sampler,
               scoring and the `ModelFamily` (`training.MMSSL_FAMILY`)
"""
