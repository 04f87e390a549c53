"""SimCLRv2 ResNet-152 (3x, selective kernels) on ImageNet: the SimCLRv2 pretraining recipe.

    python -m simclr_jax.main --config=configs/r152_3x.py --workdir=gs://BUCKET/simclr/r152_3x \
        --config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets

Hardware: a large Cloud TPU pod slice (v3-128 / v4-64 class or bigger) with bf16 compute; the
backbone alone has 795 M parameters (REFERENCE §3). Launch with launch/tpu_pod.sh.
Recipe: batch 4096, LARS with sqrt LR scaling (0.075 -> 4.8), weight decay 1e-4, temperature
0.1, 3-layer projection head, global BN, 800 epochs (SimCLRv2 paper). Expected: the released
r152_3x_sk1 model has 79.8 % linear-eval top-1 (README table); the online probe lands near it.
"""

from configs import default as default_lib


def get_config():
  config = default_lib.get_config()
  config.name = 'r152_3x'
  config.data.dataset = 'imagenet2012'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.data.image_size = 224
  config.data.color_jitter_strength = 1.0
  config.data.use_blur = True
  config.data.shuffle_buffer_multiplier = 10
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
  return config
