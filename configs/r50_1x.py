"""SimCLR ResNet-50 (1x) on ImageNet, the official README pretraining command.

    python -m simclr_jax.main --config=configs/r50_1x.py --workdir=gs://BUCKET/simclr/r50_1x \
        --config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets

Hardware: a TPU v3-32 or larger pod slice (README: "about 6 hours on 32 TPU v3 cores" for 100
epochs at batch 4096), or 8+ GPUs with bf16. Launch on Cloud TPU with launch/tpu_vm.sh.
Compiled for v3-32 on a 2-core CPU (2026-11-30, 3 min) with
    python -m simclr_jax.plan --config=configs/r50_1x.py --accelerator-type=v3-32
pretraining fits: 9.1 GiB of the 16 GiB per TensorCore (128 images each); the roofline lower
bound on the step is 153 ms (3,350 views/s per chip, compute bound), so 100 epochs (31,279
steps) take at least 80 min there; the official 6 hours is the measured figure. Compiled
estimates, not measurements; other slices in docs/BENCHMARKS.md.
Expected: the online linear probe reaches roughly 60-65 % top-1 after 100 epochs (the README
reports about 64.5 % for a separate linear evaluation of this recipe).
"""

from configs import default as default_lib


def get_config():
  config = default_lib.get_config()
  config.name = 'r50_1x'
  config.data.dataset = 'imagenet2012'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.data.image_size = 224
  config.data.color_jitter_strength = 1.0
  config.data.use_blur = True
  config.data.shuffle_buffer_multiplier = 10
  config.data.cache = False  # Decoded ImageNet is ~0.5 TB: far more than any host's RAM.
  config.data.canvas_size = 512  # ImageNet photos are <= 500 px: crops from full resolution.
  config.model.depth = 50
  config.model.width_multiplier = 1.0
  config.model.sk_ratio = 0.0
  config.model.num_proj_layers = 3
  config.model.global_bn = True
  config.model.compute_dtype = 'bfloat16'
  config.optim.optimizer = 'lars'
  config.optim.learning_rate = 0.075  # sqrt scaling: 0.075 * sqrt(4096) = 4.8 peak.
  config.optim.learning_rate_scaling = 'sqrt'
  config.optim.weight_decay = 1e-4
  config.optim.warmup_epochs = 10.0
  config.train.global_batch_size = 4096
  config.train.train_epochs = 100
  config.train.temperature = 0.1
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 1000
  config.train.eval_every_steps = 5000
  config.train.eval_batch_size = 1024
  return config
