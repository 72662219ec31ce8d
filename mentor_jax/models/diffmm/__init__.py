"""DiffMM (Jiang et al., ACM MM 2024) from the official HKUDS/DiffMM code.

`diffusion.py`: the denoisers and the Gaussian schedule (Model.py's
`Denoise` and `GaussianDiffusion`); `graphs.py`: the normalized graphs with
self-loops and the edge dropout; `model.py`: the recommender, its epoch
(denoiser phase, rebuild, recommender steps) and the family.
"""
