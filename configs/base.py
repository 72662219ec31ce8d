"""Defaults shared by every MENTOR config: the official code's settings.

Names follow the official configs (Jinfeng-Xu/MENTOR src/configs/overall.yaml
and model/MENTOR.yaml) wherever one exists, so that a parity check is a
mechanical comparison. Values are those of the shipped grid's first cell
(MENTOR_SPEC §3); dataset configs override the data section only.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Data. `data_npz` is the prepared file; when it is missing, `data_source`
  # says how to build it: 'synth:<preset>' (generated, seeded) or the path of
  # an MMRec-format folder. '' means "prepare it yourself" (the error says how).
  config.dataset = 'small'
  config.data_npz = 'data/small.npz'
  config.data_source = 'synth:small'
  config.v_feat_file = 'image_feat.npy'
  config.t_feat_file = 'text_feat.npy'

  # Model (MENTOR.yaml). Two user-item layers are hard-coded upstream.
  config.model = 'mentor'
  config.embedding_size = 64
  config.n_ui_layers = 2
  config.n_mm_layers = 1
  config.knn_k = 10
  config.mm_image_weight = 0.1
  config.noise_eps = 0.1

  # Loss weights (MENTOR.yaml; the grid varies mask_weight_g and temp).
  config.reg_weight = 1e-3
  config.align_weight = 0.1
  config.mask_weight_f = 1.5
  config.dropout = 0.5
  config.mask_weight_g = 1e-4
  config.temp = 0.2

  # Optimizer and schedule (overall.yaml).
  config.learning_rate = 1e-4
  config.train_batch_size = 2048
  config.epochs = 1000
  config.stopping_step = 20
  config.seed = 999

  # Evaluation (overall.yaml). Model selection on valid Recall@10; metrics
  # are rounded to 4 decimals before the comparison, as MMRec does.
  config.valid_metric = 'recall@10'
  config.topk = (5, 10, 20, 50)
  config.eval_batch_size = 4096
  # 'last_step': score with the embeddings of the epoch's last training
  # forward pass, one optimizer step stale (the official behaviour).
  # 'recompute': one clean forward pass with the current parameters.
  config.eval_embeddings = 'last_step'

  # Engineering knobs; none of them changes results beyond float rounding.
  config.spmm_kernel = 'auto'  # 'auto' | 'csr' | 'bcoo' | 'segment_sum'
  config.infonce_impl = 'fused'  # 'fused' (blockwise, exact) | 'naive'
  config.infonce_block_size = 1024

  # Bookkeeping.
  config.log_every_epochs = 1
  return config
