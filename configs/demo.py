"""Demo: SimCLR pretraining of a small ResNet-18 on the embedded CIFAR-10 photos.

    python -m simclr_jax.main --config=configs/demo.py

Hardware: any CPU (2 cores are enough); also runs unchanged on one GPU/TPU.
Expected: a few minutes on 2 CPU cores (see docs/BENCHMARKS.md for measured times); the
contrastive loss falls from about 2*ln(2*128-1) = 11.1 and the linear probe on stop-gradient
features beats chance (10 %) on the 200 held-out photos. Output in workdirs/demo/: checkpoints,
TensorBoard events (`tensorboard --logdir workdirs`), results.json. Rerunning resumes.
"""

from configs import default as default_lib


def get_config():
  config = default_lib.get_config()
  config.name = 'demo'
  config.data.dataset = 'demo'  # 1,000 train / 200 test photos shipped in simclr_jax/demo_data.
  config.data.image_size = 32
  config.data.color_jitter_strength = 0.5  # CIFAR recipe.
  config.data.use_blur = False
  config.data.shuffle_buffer_multiplier = 10
  config.model.depth = 18
  config.model.blocks_per_stage = (1, 1, 1, 1)  # Tiny: one basic block per group.
  config.model.width_multiplier = 0.25  # 16..128 channels, about 0.3M parameters.
  config.optim.optimizer = 'lars'
  config.optim.learning_rate = 1.0  # CIFAR recipe (linear scaling: 0.5 at batch 128).
  config.optim.weight_decay = 1e-4
  config.optim.warmup_epochs = 2.0
  config.train.global_batch_size = 128
  config.train.train_epochs = 24
  config.train.temperature = 0.5
  config.train.log_every_steps = 10
  config.train.checkpoint_every_steps = 50
  config.train.eval_batch_size = 200
  return config
