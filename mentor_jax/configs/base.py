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

  # Code-vs-paper switches (MENTOR_SPEC §2.7; docs/paper_vs_code.md). Each
  # default is the official code; configs/paper.py sets the paper's values.
  # knn_k (above): 10 code, 40 paper (the .npz stores 40 neighbours).
  # n_mm_layers (above): item-item layers L; 1 code, the paper says only
  # "multilayer".
  # Item-item aggregation added to the UI output x: 'power' = x + S^L x (code,
  # and the paper's "+ A^(l)"), 'sum' = x + sum_{l=1..L} S^l x.
  config.mm_aggregation = 'power'
  # Fusion: 'per_user' = U x 2 table weight_u on the user side only (code);
  # 'alpha' = one trainable alpha (init 0.5) on users and items (Eq. 7).
  config.fusion = 'per_user'
  # Alignment statistics: 'global' = one mean / variance per view (code);
  # 'per_node' = per row over the feature dimension (Eq. 8).
  config.align_stats = 'global'
  # Dispersion compared by the alignment: 'variance' (code, and Eq. 8's
  # Var) or 'std' (the sigma symbol of Eq. 9-16 read literally).
  config.align_dispersion = 'variance'
  # Alignment levels in the paper's numbering (Fig. 3): 1 = (v, t),
  # 2 = (id, v) + (id, t), 3 = (f, v) + (f, t) + (f, id); () = MENTOR_base.
  config.align_levels = (1, 2, 3)
  # Feature masking: 'logged' = computed without gradient (code: a no-op
  # for training); 'gradient' = Eq. 17 as a real loss, stop-gradient on the
  # dropout view.
  config.feature_mask = 'logged'
  # Graph perturbation: 'separate_encoders' = four extra noise encoders
  # (code); 'own_encoders' = two perturbed passes of the v and t encoders
  # themselves (Eq. 18-20).
  config.perturbation = 'separate_encoders'
  # Noise after each UI layer: 'simgcl' = sign-aligned, per-node norm
  # noise_eps (code); 'uniform' = noise_eps * U(0, 1) per entry (Eq. 18-19,
  # with noise_eps = 1).
  config.noise = 'simgcl'
  # InfoNCE views: 'fused' = 128-d [w_v v || w_t t] views (code);
  # 'per_modality' = one InfoNCE per modality on 64-d views (Eq. 21).
  config.nce_views = 'fused'
  # BPR logarithm base: 2.0 (code: log2) or e (Eq. 23: ln).
  config.bpr_log_base = 2.0
  # L2 term: 'code' = reg_weight * (mean square of the batch users' v and t
  # preference rows + mean square of weight_u); 'paper' = reg_weight * batch
  # mean of the rows' squared norms, no weight_u (Eq. 24).
  config.reg_form = 'code'

  # Hyper-parameter grid of `python -m mentor_jax.grid`: the shipped MENTOR
  # grid (MENTOR.yaml), 2 x 3 cells.
  config.grid = ml_collections.ConfigDict()
  config.grid.mask_weight_g = (1e-4, 1e-3)
  config.grid.temp = (0.2, 0.4, 0.6)

  # Optimizer and schedule (overall.yaml).
  config.learning_rate = 1e-4
  # [factor, every]: epoch e trains with learning_rate * factor**(e / every);
  # overall.yaml's [1.0, 50] is a constant rate.
  config.learning_rate_scheduler = (1.0, 50)
  config.train_batch_size = 2048
  config.epochs = 1000
  config.stopping_step = 20
  config.seed = 999
  # Several runs as one compiled program (mentor_jax/stack.py): seeds, e.g.
  # (0, 1, 2), and a sweep of continuous settings, e.g.
  # 'mask_weight_g=1e-4,1e-3;temp=0.2,0.4' (the product, times the seeds).
  config.seeds = ()
  config.sweep = ''
  # Runs of a stack computed at once inside its program: 'auto' = one at a
  # time on a CPU (one run fills the cores; bench/RESULTS.md section 14),
  # all of them (one vmap) on a GPU/TPU; or 'all' / a count such as '2'.
  config.stack_parallel = 'auto'

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
  config.infonce_impl = 'fused'  # 'fused' (blockwise, exact), 'naive', 'sharded'
  config.infonce_block_size = 256
  # Precision of the training matmuls (item MLPs, InfoNCE; mentor_jax/ops/
  # precision.py): 'float32' (strict; the official code's), 'tf32' or
  # 'bf16' (float32 accumulation). Evaluation always scores in float32.
  # Unlike the knobs above, the reduced ones change results: their effect on
  # metrics is measured in bench/RESULTS.md ("Precision").
  config.matmul_precision = 'float32'

  # Scale-out (mentor_jax/distributed.py, mesh.py; README "Several devices and hosts").
  # 'auto': one 'data' axis over every device of every process; an int n
  # uses the first n devices (single host only).
  config.mesh_shape = 'auto'
  # Split the user/item tables (preference tables, weight_u, id_feat, item
  # features, their Adam moments) by rows over the devices; False replicates.
  config.shard_tables = False
  # 'all' (official): InfoNCE over every user and every item.
  # 'batch': over the batch's distinct users / positive items only (SimGCL
  # practice, O(B^2)); NOT the official semantics, for very large graphs.
  config.infonce_scope = 'all'
  # Multi-host: '' / 0 / -1 fall back to JAX_COORDINATOR_ADDRESS,
  # JAX_NUM_PROCESSES, JAX_PROCESS_ID; one process needs none of them.
  config.coordinator_address = ''
  config.num_processes = 0
  config.process_id = -1

  # Bookkeeping.
  config.log_every_epochs = 1
  # Checkpoints (mentor_jax/checkpointing.py): the latest state every n
  # epochs (and on the last epoch, early stop or SIGINT/SIGTERM) under
  # <workdir>/checkpoints/latest; the best epoch always under .../best.
  config.checkpoint_every_epochs = 1
  # A resume whose dataset differs in content (same shapes) from the one the
  # checkpoint was trained on is refused unless this is True.
  config.resume_other_data = False
  return config


def amazon_config(name: str, *, synthetic: bool = False
                  ) -> ml_collections.ConfigDict:
  """An Amazon dataset (baby, sports, clothing) with the official settings.

  Args:
    name: the MMRec dataset name.
    synthetic: use the seeded synthetic dataset of the same shape (built on
      first use) instead of the real one, which users download (README).
  """
  config = get_config()
  config.dataset = f'synth_{name}' if synthetic else name
  config.data_npz = f'data/{config.dataset}.npz'
  # For the real data, set this to the downloaded MMRec folder to convert it
  # on first use.
  config.data_source = f'synth:{name}' if synthetic else ''
  return config
