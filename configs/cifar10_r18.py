"""SimCLR ResNet-18 on CIFAR-10, the official CIFAR recipe (google-research/simclr README).

    python -m simclr_jax.main --config=configs/cifar10_r18.py --workdir=workdirs/cifar10_r18

Hardware: one GPU or TPU host (batch 512 of 32x32 images). Needs the tfds `cifar10` dataset
prepared in --config.data.tfds_data_dir (or use data.dataset='folder' with an image folder).
Compiled for a TPU v4-8 (4 chips) on a 2-core CPU (2026-11-30) with
    python -m simclr_jax.plan --config=configs/cifar10_r18.py --accelerator-type=v4-8
all four stages fit easily (pretrain 1.0 GiB of 32 GiB per chip); the roofline lower bound on a
pretraining step is 11.7 ms (memory bound), so the 97,657 steps take at least 19 min there; the
host input, not the chip, will set the pace (44k images/s would be needed). Compiled
estimates, not measurements.
Expected: 1000 epochs (97,657 steps); the official README reports about 91 % linear-eval top-1
for this recipe; the online probe trained during pretraining lands a few points lower.
"""

from configs import default as default_lib


def get_config():
  config = default_lib.get_config()
  config.name = 'cifar10_r18'
  config.data.dataset = 'cifar10'
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  config.data.image_size = 32  # CIFAR stem (3x3 stride 1, no max-pool), no eval crop.
  config.data.color_jitter_strength = 0.5
  config.data.use_blur = False
  config.data.shuffle_buffer_multiplier = 50  # Official: 50x batch for CIFAR.
  config.model.depth = 18
  config.model.width_multiplier = 1.0
  config.model.num_proj_layers = 3
  config.optim.optimizer = 'lars'
  config.optim.learning_rate = 1.0  # Linear scaling: peak 2.0 at batch 512.
  config.optim.learning_rate_scaling = 'linear'
  config.optim.weight_decay = 1e-4
  config.optim.warmup_epochs = 10.0
  config.train.global_batch_size = 512
  config.train.train_epochs = 1000
  config.train.temperature = 0.5
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 2000
  config.train.eval_every_steps = 10000
  config.knn.every_steps = 10000

  # Pretrain -> fine-tune on 10 % of the labels -> self-distill; `--config.stages=pretrain,`
  # for pretraining alone. Fine-tuning follows the official ImageNet recipe shape (LARS, sqrt
  # scaling, no decay) at CIFAR batch sizes; these CIFAR stage settings are ours (untuned).
  config.stages = ('pretrain', 'finetune', 'distill', 'supervised')
  config.finetune.label_fraction = 0.1
  config.finetune.ft_proj_selector = 1
  config.finetune.optim.learning_rate = 0.005
  config.finetune.optim.learning_rate_scaling = 'sqrt'
  config.finetune.train.global_batch_size = 512
  config.finetune.train.train_epochs = 100
  config.supervised.train.global_batch_size = 512
  config.supervised.train.train_epochs = 200
  config.distill.student_init_from = 'pretrain'
  config.distill.train.global_batch_size = 512
  config.distill.train.train_epochs = 200
  return config
