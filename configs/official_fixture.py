"""The two tiny official SimCLRv2 networks of ../shared/fixtures/official_tf2 (tests and demos).

    python -m simclr_jax.import_tf2 --config=configs/official_fixture.py:sk1 \
        --saved_model=../shared/fixtures/official_tf2/bottleneck_sk1/saved_model \
        --workdir=/tmp/official_sk1

`:sk0` (default) is `bottleneck_sk0`: plain ResNet, supervised head on the encoder output
(official pretrain with linear eval); `:sk1` is `bottleneck_sk1`: selective kernels, supervised
head on the first projection-head layer (official finetune). Both: one bottleneck block per
stage, width 0.125 (256 features), 64x64 inputs (ImageNet stem), 3 head layers, 10 classes.
The architecture is all this config is for; the data fields are the defaults.
"""

from configs import default as default_lib

_VARIANTS = {
  # variant: (sk_ratio, ft_proj_selector), from the fixtures' README table.
  'sk0': (0.0, 0),
  'sk1': (0.0625, 1),
}


def get_config(variant: str = 'sk0'):
  if variant not in _VARIANTS:
    raise ValueError(f'configs/official_fixture.py:{variant} is unknown; use :sk0 or :sk1')
  sk_ratio, ft_proj_selector = _VARIANTS[variant]
  config = default_lib.get_config()
  config.name = f'official_fixture_{variant}'
  config.data.image_size = 64
  config.model.depth = 50  # bottleneck blocks
  config.model.blocks_per_stage = (1, 1, 1, 1)
  config.model.width_multiplier = 0.125
  config.model.sk_ratio = sk_ratio
  config.model.cifar_stem = False
  config.model.num_proj_layers = 3
  config.model.proj_out_dim = 128
  config.model.ft_proj_selector = ft_proj_selector
  config.model.compute_dtype = 'float32'
  return config
