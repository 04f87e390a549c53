"""SimCLRv2 ResNet-152 (3x, selective kernels) on ImageNet: pretrain -> finetune -> distill.

    python -m simclr_jax.main --config=configs/r152_3x.py --workdir=gs://BUCKET/simclr/r152_3x \
        --config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets

Variants after a colon choose the label fraction and the student: `configs/r152_3x.py:1pct`
(default: 1 % labels, self-distillation into R152 3x SK), `:10pct`, `:1pct_to_r50`,
`:10pct_to_r50` (distill into ResNet-50 1x). Pretraining only: `--config.stages=pretrain,`.

Hardware: Cloud TPU v4-64 (32 chips; JAX runs one device per v4 chip) at the recipe's batch
4096, bf16 compute, block remat; the backbone alone has 795 M parameters. Compiled for that slice
on a 2-core CPU (2026-11-30, 44 min, 18.5 GB of RAM) with
    python -m simclr_jax.plan --config=configs/r152_3x.py --accelerator-type=v4-64
every stage fits the 32 GiB of HBM per chip: pretrain 28.6 GiB (128 images, 256 views per chip),
finetune 11.0 GiB, distill 23.2 GiB (with the teacher). Roofline lower bounds on the step time:
pretrain 1.11 s (230 views/s per chip, compute bound), finetune 0.20 s, distill 0.69 s; 800
epochs of pretraining are then at least 77 hours. Compiled estimates, not measurements; other
slices in docs/BENCHMARKS.md. Launch with launch/tpu_vm.sh (it runs the same plan first).
Recipe: batch 4096, LARS with sqrt LR scaling (0.075 -> 4.8), weight decay 1e-4, temperature
0.1, 3-layer projection head, global BN, 800 epochs (SimCLRv2 paper). Expected: the released
r152_3x_sk1 model has 79.8 % linear-eval top-1 (README table); the online probe lands near it.
"""

from configs import default as default_lib


def get_config(variant: str = '1pct'):
  labels, _, student = variant.partition('_to_')
  if labels not in ('1pct', '10pct') or student not in ('', 'r50'):
    raise ValueError(f'configs/r152_3x.py:{variant} is unknown; use 1pct, 10pct, 1pct_to_r50 or '
                     '10pct_to_r50')
  config = default_lib.get_config()
  config.name = 'r152_3x'
  config.data.dataset = 'imagenet2012'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.data.image_size = 224
  config.data.color_jitter_strength = 1.0
  config.data.use_blur = True
  config.data.shuffle_buffer_multiplier = 10
  config.data.cache = False  # Decoded ImageNet is ~0.5 TB: far more than any host's RAM.
  config.data.canvas_size = 512  # ImageNet photos are <= 500 px: crops from full resolution.
  config.model.depth = 152
  config.model.width_multiplier = 3.0
  config.model.sk_ratio = 0.0625
  config.model.num_proj_layers = 3
  config.model.proj_out_dim = 128
  config.model.global_bn = True
  config.model.compute_dtype = 'bfloat16'
  config.model.remat = True  # Activations of 795 M parameters do not fit otherwise.
  config.optim.optimizer = 'lars'
  config.optim.learning_rate = 0.075
  config.optim.learning_rate_scaling = 'sqrt'
  config.optim.weight_decay = 1e-4
  config.optim.warmup_epochs = 10.0
  config.train.global_batch_size = 4096
  config.train.train_epochs = 800
  config.train.temperature = 0.1
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 1000
  config.train.eval_every_steps = 10000
  config.train.eval_batch_size = 1024
  config.stages = ('pretrain', 'finetune', 'distill')

  # Fine-tuning: the official ImageNet 1 % recipe (README); 10 %: same, 30 epochs (paper).
  config.finetune.dataset = f'imagenet2012_subset/{labels}'
  config.finetune.ft_proj_selector = 1
  config.finetune.fine_tune_after_block = -1
  config.finetune.zero_init_logits_layer = True
  config.finetune.global_bn = True
  config.finetune.optim.optimizer = 'lars'
  config.finetune.optim.learning_rate = 0.005
  config.finetune.optim.learning_rate_scaling = 'sqrt'
  config.finetune.optim.weight_decay = 0.0
  config.finetune.optim.warmup_epochs = 0.0
  config.finetune.train.global_batch_size = 1024
  config.finetune.train.train_epochs = 60 if labels == '1pct' else 30

  # Distillation on all of ImageNet train (labels unused), teacher = the fine-tuned R152 3x SK.
  # Not in the official code; these settings are ours (untuned): LARS, batch 4096, tau 1.
  config.distill.temperature = 1.0
  config.distill.label_weight = 0.0
  config.distill.student_init_from = 'pretrain' if not student else ''
  if student == 'r50':
    config.distill.student.depth = 50
    config.distill.student.width_multiplier = 1.0
    config.distill.student.sk_ratio = 0.0
  config.distill.optim.optimizer = 'lars'
  config.distill.optim.learning_rate = 0.1
  config.distill.optim.learning_rate_scaling = 'linear'
  config.distill.optim.weight_decay = 1e-4
  config.distill.optim.warmup_epochs = 5.0
  config.distill.train.global_batch_size = 4096
  config.distill.train.train_epochs = 400
  return config
