"""SimCLR(v2) network: ResNet encoder + projection head + supervised head (tf2/model.py).

Top-level parameter tree: `encoder/...` (see resnet.py), `projection_head/nl_{j}/...`,
`head_supervised/linear_layer/dense/...` (see heads.py). Endpoints sown into `intermediates`:
the encoder's (under `encoder/`) plus `proj_head_input`, `proj_head_output`, `logits_sup`.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from simclr_jax.models.heads import ProjectionHead, SupervisedHead
from simclr_jax.models.resnet import ResNet


class SimCLRModel(nn.Module):
  """Encoder and both heads; `__call__` returns every output a stage may need."""

  depth: int = 50
  width_multiplier: float = 1
  sk_ratio: float = 0.0
  cifar_stem: bool = False
  blocks_per_stage: Sequence[int] | None = None
  num_proj_layers: int = 3
  proj_out_dim: int = 128
  num_classes: int = 10
  # Which of `hiddens` feeds the supervised head: 0 = encoder output (linear probe / v1
  # fine-tuning), 1 = first head layer (SimCLRv2 fine-tuning), -1 = last layer.
  ft_proj_selector: int = 0
  # Official pretraining linear eval: the probe must not train the encoder (tf2/model.py).
  supervised_head_stop_gradient: bool = True
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  remat: bool = False
  block_type: str | None = None
  # BatchNorm of the encoder and projection head in inference mode even when train=True: the
  # linear-evaluation setting (fine_tune_after_block=4), where moving statistics must not move.
  frozen_bn: bool = False

  def __post_init__(self) -> None:
    num_hiddens = self.num_proj_layers + 1
    if not -num_hiddens <= self.ft_proj_selector < num_hiddens:
      raise ValueError(
        f'model.ft_proj_selector={self.ft_proj_selector} is out of range for '
        f'model.num_proj_layers={self.num_proj_layers} (use -{num_hiddens}..{num_hiddens - 1})'
      )
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> dict[str, Any]:
    features = ResNet(
      depth=self.depth,
      width_multiplier=self.width_multiplier,
      sk_ratio=self.sk_ratio,
      cifar_stem=self.cifar_stem,
      blocks_per_stage=self.blocks_per_stage,
      block_type=self.block_type,
      dtype=self.dtype,
      bn_axis_name=self.bn_axis_name,
      bn_momentum=self.bn_momentum,
      remat=self.remat,
      name='encoder',
    )(images, train and not self.frozen_bn)  # [N, 2048w] float32
    self.sow('intermediates', 'proj_head_input', features)
    hiddens = ProjectionHead(
      num_layers=self.num_proj_layers,
      out_dim=self.proj_out_dim,
      dtype=self.dtype,
      bn_axis_name=self.bn_axis_name,
      bn_momentum=self.bn_momentum,
      name='projection_head',
    )(features, train and not self.frozen_bn)
    hiddens = [h.astype(jnp.float32) for h in hiddens]
    projection = hiddens[-1]  # [N, proj_out_dim], before the loss's L2 normalisation
    self.sow('intermediates', 'proj_head_output', projection)

    head_input = hiddens[self.ft_proj_selector]
    if self.supervised_head_stop_gradient:
      head_input = jax.lax.stop_gradient(head_input)
    # Logits stay float32 (cheap, and they feed a softmax).
    logits_sup = SupervisedHead(self.num_classes, dtype=jnp.float32, name='head_supervised')(
      head_input, train
    )
    self.sow('intermediates', 'logits_sup', logits_sup)
    return {
      'features': features,
      'projection': projection,
      'hiddens': hiddens,
      'logits_sup': logits_sup,
    }
