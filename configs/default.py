"""Every configuration field of simclr_jax, with its default and what it means.

Experiment configs (`configs/cifar10_r18.py`, `configs/r152_3x.py`, ...) start from `get_config()`
here and override fields; no code reads a field that is not declared in this file. Defaults follow
the official SimCLR flags (google-research/simclr `run.py`) unless a comment says otherwise.

Run:  python -m simclr_jax.main --config=configs/default.py --workdir=/tmp/simclr
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = 'default'  # Run name; the default workdir is workdirs/<name>.
  config.seed = 0  # Root of every random draw: init, data order, augmentations.
  config.compilation_cache_dir = ''  # Persistent XLA cache: restarts skip compiling. '' = off.
  # 'supervised' is the finetune recipe from scratch: the baseline that shows what pretraining
  # bought. Each stage runs in workdir/<stage>/.
  config.stages = ('pretrain',)  # In order: 'pretrain', 'finetune', 'distill', 'supervised'.

  # ---- Data -------------------------------------------------------------------------------
  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'cifar10'  # tfds name (cifar10, stl10, imagenet2012, ...), 'folder' or 'demo'.
  data.folder = ''  # For dataset='folder': root/<split>/<class>/*.png|jpg, or a flat folder.
  data.tfds_data_dir = config_dict.placeholder(str)  # tfds data_dir; None = tfds default.
  data.train_split = 'train'  # Split used for training ('unlabelled' for STL-10 pretraining).
  data.eval_split = 'test'  # Split used for evaluation ('validation' for ImageNet).
  data.image_size = 32  # Network input side in pixels (224 for ImageNet, 32 for CIFAR).
  data.color_jitter_strength = 0.5  # s of the official data_util.py; 1.0 ImageNet, 0.5 CIFAR.
  data.use_blur = False  # Gaussian blur on both views (True for ImageNet, False for CIFAR).
  data.eval_crop_proportion = 0.875  # Centre crop kept at eval (ignored when image_size <= 32).
  data.shuffle_buffer_multiplier = 10  # tfds shard windows: x host batch (official 10, CIFAR 50).
  data.cache = True  # Allow caching: decoded canvases if they fit in 1/4 of RAM, else the encoded.
  # The host decodes onto a canvas; every augmentation runs on the device (data/views.py).
  data.canvas_size = 0  # Host canvas side; larger images shrink to fit. 0 = data.image_size.
  data.blur_mode = 'batch'  # 'batch' = one sigma per device batch (official), 'image' = per image.
  # Device-resident: the split on every device, no host pipeline, works without TensorFlow.
  data.device_resident = False  # Train split as uint8 on every device (small datasets).

  # ---- Model ------------------------------------------------------------------------------
  config.model = model = ml_collections.ConfigDict()
  model.depth = 50  # ResNet depth: 18, 34, 50, 101, 152 or 200.
  model.width_multiplier = 1.0  # Channel multiplier w: 64w..512w filters per group.
  model.sk_ratio = 0.0  # Selective-kernel ratio; 0.0625 in SimCLRv2, 0 disables SK.
  model.blocks_per_stage = config_dict.placeholder(tuple)  # Blocks per group (overrides depth).
  model.cifar_stem = config_dict.placeholder(bool)  # 3x3 stride-1 stem; None = image_size <= 32.
  model.num_proj_layers = 3  # Projection-head depth (SimCLRv2: 3, SimCLRv1: 2).
  model.proj_out_dim = 128  # Output width of the projection head.
  model.ft_proj_selector = 0  # Head layer feeding the supervised head (SimCLRv2 fine-tune: 1).
  model.global_bn = True  # BatchNorm statistics over all devices (cross-replica BN).
  model.bn_momentum = 0.9  # Moving average decay of BN statistics (official batch_norm_decay).
  model.compute_dtype = 'float32'  # 'float32' or 'bfloat16' (params and BN stats stay float32).
  model.remat = False  # Rematerialise each residual block to save memory.

  # ---- Optimiser and schedule -------------------------------------------------------------
  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = 'lars'  # 'lars', 'momentum' (Nesterov SGD) or 'adamw'.
  optim.learning_rate = 0.3  # Base LR before scaling.
  optim.learning_rate_scaling = 'linear'  # 'linear': base*batch/256; 'sqrt': base*sqrt(batch).
  optim.warmup_epochs = 10.0  # Linear warm-up from 0, then cosine decay to 0.
  optim.weight_decay = 1e-6  # Official TF2 default (TF1: 1e-4).
  optim.momentum = 0.9  # Momentum of LARS / SGD.
  optim.trust_coefficient = 1e-3  # LARS eeta.

  # ---- Training loop ----------------------------------------------------------------------
  config.train = train = ml_collections.ConfigDict()
  train.global_batch_size = 512  # Images per step over all devices (each gives two views).
  train.train_epochs = 100  # Length of training in epochs (ignored when train_steps > 0).
  train.train_steps = 0  # If > 0, the exact number of steps.
  train.temperature = 0.1  # NT-Xent temperature (ImageNet 0.1, CIFAR 0.5).
  train.linear_eval_while_pretraining = True  # Train a probe on stop-gradient features.
  train.log_every_steps = 50  # Metrics to TensorBoard and the log every N steps.
  train.checkpoint_every_steps = 1000  # Save a checkpoint every N steps (and at the end).
  train.keep_checkpoints = 3  # Number of checkpoints kept.
  train.eval_at_end = True  # Evaluate the probe on the eval split at the end.
  train.eval_every_steps = 0  # If > 0, also evaluate every N steps.
  train.eval_batch_size = 256  # Global eval batch (padded and masked, so any size works).
  train.plots_at_end = True  # Augmentations, t-SNE and curves into <stage workdir>/plots/.
  train.skip_nonfinite_updates = False  # Skip (not apply) updates with NaN/Inf gradients.
  train.shard_state = False  # Split params and optimizer state over devices (big models).
  train.allow_config_change = False  # Continue a workdir whose saved config differs.
  train.profile_steps = ''  # 'START,COUNT': a jax.profiler trace of those steps (TensorBoard).
  train.profile_all_hosts = False  # Profile on every host, not only on process 0.

  # ---- kNN monitor (pretraining) ----------------------------------------------------------
  config.knn = knn = ml_collections.ConfigDict()
  knn.enabled = True  # kNN top-1 of encoder features (train split vs eval split) at the end.
  knn.every_steps = 0  # If > 0, also every N steps.
  knn.k = 200  # Neighbours (cosine similarity).
  knn.temperature = 0.1  # Vote weight exp(similarity / temperature).
  knn.max_train_examples = 50_000  # Memory bank size cap (first N of the train split).

  # ---- Fine-tuning on few labels (stage 'finetune'; 'supervised' uses the same data) -------
  config.finetune = finetune = ml_collections.ConfigDict()
  finetune.init_from = ''  # Stage workdir to restore encoder + head from; '' = workdir/pretrain.
  finetune.dataset = ''  # Labelled dataset, e.g. 'imagenet2012_subset/10pct'; '' = data.dataset.
  finetune.label_fraction = 0.1  # Class-balanced fraction of the train split (in (0, 1]).
  finetune.examples_per_class = 0  # If > 0, exactly this many labelled images per class instead.
  finetune.fine_tune_after_block = -1  # -1 all layers; k: freeze stem..group k; 4 = linear eval.
  finetune.ft_proj_selector = 1  # SimCLRv2: the classifier sits on the first head layer.
  finetune.zero_init_logits_layer = True  # Official: zero the new classifier after restoring.
  finetune.global_bn = True  # Cross-replica BN while fine-tuning (linear eval recipe: False).
  # Official ImageNet 1 % fine-tuning recipe (README).
  finetune.optim = ml_collections.ConfigDict()
  finetune.optim.optimizer = 'lars'  # Optimizer of this stage (official 1 % recipe).
  finetune.optim.learning_rate = 0.005  # Base LR before scaling.
  finetune.optim.learning_rate_scaling = 'sqrt'  # 'linear' or 'sqrt'.
  finetune.optim.warmup_epochs = 0.0  # Linear warm-up, then cosine decay to 0.
  finetune.optim.weight_decay = 0.0  # Weight decay.
  finetune.optim.momentum = 0.9  # Momentum.
  finetune.optim.trust_coefficient = 1e-3  # LARS eeta.
  finetune.train = ml_collections.ConfigDict()
  finetune.train.global_batch_size = 1024  # Images per step over all devices.
  finetune.train.train_epochs = 60  # Length in epochs of the stage data.
  finetune.train.train_steps = 0  # If > 0, the exact number of steps.

  # ---- Supervised baseline (stage 'supervised': finetune data and model, no restore) --------
  config.supervised = supervised = ml_collections.ConfigDict()
  supervised.optim = ml_collections.ConfigDict()
  supervised.optim.optimizer = 'lars'  # Optimizer of this stage (ours).
  supervised.optim.learning_rate = 0.1  # Base LR before scaling.
  supervised.optim.learning_rate_scaling = 'linear'  # 'linear' or 'sqrt'.
  supervised.optim.warmup_epochs = 5.0  # Linear warm-up, then cosine decay to 0.
  supervised.optim.weight_decay = 1e-4  # Weight decay.
  supervised.optim.momentum = 0.9  # Momentum.
  supervised.optim.trust_coefficient = 1e-3  # LARS eeta.
  supervised.train = ml_collections.ConfigDict()
  supervised.train.global_batch_size = 1024  # Images per step over all devices.
  supervised.train.train_epochs = 90  # Length in epochs of the stage data.
  supervised.train.train_steps = 0  # If > 0, the exact number of steps.

  # ---- Distillation (stage 'distill') -----------------------------------------------------
  config.distill = distill = ml_collections.ConfigDict()
  distill.teacher_workdir = ''  # Fine-tuned teacher's stage workdir; '' = workdir/finetune.
  distill.student_init_from = ''  # '' = from scratch; 'pretrain' = this run's; or a stage workdir.
  distill.temperature = 1.0  # tau of softmax(teacher / tau) and log_softmax(student / tau).
  distill.label_weight = 0.0  # alpha: weight of the labelled cross-entropy (labelled subset only).
  distill.student = ml_collections.ConfigDict()  # None = as the teacher (self-distillation).
  distill.student.depth = config_dict.placeholder(int)  # Student ResNet depth.
  distill.student.width_multiplier = config_dict.placeholder(float)  # Student width.
  distill.student.sk_ratio = config_dict.placeholder(float)  # Student selective kernels.
  distill.student.blocks_per_stage = config_dict.placeholder(tuple)  # Student blocks per group.
  distill.optim = ml_collections.ConfigDict()
  distill.optim.optimizer = 'lars'  # Optimizer of this stage (ours).
  distill.optim.learning_rate = 0.1  # Base LR before scaling.
  distill.optim.learning_rate_scaling = 'linear'  # 'linear' or 'sqrt'.
  distill.optim.warmup_epochs = 5.0  # Linear warm-up, then cosine decay to 0.
  distill.optim.weight_decay = 1e-4  # Weight decay.
  distill.optim.momentum = 0.9  # Momentum.
  distill.optim.trust_coefficient = 1e-3  # LARS eeta.
  distill.train = ml_collections.ConfigDict()
  distill.train.global_batch_size = 1024  # Images per step over all devices.
  distill.train.train_epochs = 100  # Length in epochs of the stage data.
  distill.train.train_steps = 0  # If > 0, the exact number of steps.

  # ---- Multi-host -------------------------------------------------------------------------
  config.distributed = distributed = ml_collections.ConfigDict()
  distributed.initialize = False  # Call jax.distributed.initialize() (True on TPU pods).
  distributed.coordinator_address = config_dict.placeholder(str)  # host:port; None = auto (TPU).
  distributed.num_processes = config_dict.placeholder(int)  # None = auto-detect.
  distributed.process_id = config_dict.placeholder(int)  # None = auto-detect.
  return config
