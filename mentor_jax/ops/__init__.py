"""Operators shared by the models: pure `jax.numpy`, no Flax, no model code.

  sparse.py     `Csr` pytrees and `spmm` kernels ('csr', 'bcoo', 'segment_sum')
  graph.py      the item-item kNN graph, `item_graph`, LightGCN's readout
  infonce.py    every InfoNCE variant and the one dispatcher, `info_nce_loss`
  losses.py     BPR forms (MENTOR's, MMRec's), EmbLoss, L2 normalisation
  init.py       PyTorch's initializers
  precision.py  float32 / TF32 / bf16 matmuls
  pruning.py    per-epoch edge sampling with fixed shapes (FREEDOM, LayerGCN)
"""
