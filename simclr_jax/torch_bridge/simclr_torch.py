"""SimCLR(v2) network in PyTorch, exact to the official TF2 code and to simclr_jax.

Self-contained: imports torch only (torchvision only inside `load_torchvision_resnet`). Written
next to `model.pt` by `python -m simclr_jax.export --format=torch`:

    import torch, simclr_torch
    model = simclr_torch.load('exported/demo')         # model.pt + simclr_torch.json
    model.eval()                                       # BN on moving statistics (inference)
    images = torch.rand(8, 3, 32, 32)                  # NCHW float32 in [0, 1], no mean/std
    out = model(images)                                # 'features', 'projection', 'logits_sup'
    out = model(images, endpoints=True)                # + the official endpoints, NCHW

Conventions kept (google-research/simclr tf2/resnet.py and model.py, commit 383d414):
- ResNet v1, stride on the 3x3, projection shortcut on the first block of every group;
- max-pool 3x3/2 'SAME': on an even input TF pads only bottom/right, PyTorch's
  MaxPool2d(3, 2, padding=1) would pad both sides and take other windows (`SameMaxPool2d`);
- SK models: ResNet-D deep stem, average-pool shortcuts whose stride-1 'SAME' pooling leaves the
  padded cells out of the mean, selective-kernel convs;
- heads: bias-free dense + BN (centre and ReLU on middle layers only), supervised dense with bias;
- BatchNorm: epsilon 1e-5; momentum = 1 - official decay (PyTorch counts the other way); in
  training mode the running variance is updated with the *biased* batch variance, as TF and flax
  do (`BatchNorm`; torch.nn.BatchNorm2d would use the unbiased one).
"""

import json
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

STATE_DICT_FILE = 'model.pt'
ARCHITECTURE_FILE = 'simclr_torch.json'
TORCHVISION_FILE = 'torchvision_resnet{depth}.pt'  # depth 50, 101 or 152
_BLOCKS_FOR_DEPTH = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                     152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
_SK_MIN_DIM = 32  # Official SK_Conv2D min_dim.


class BatchNorm(nn.BatchNorm2d):
  """BatchNorm over [N, C, H, W] or [N, C] with the official/flax statistics.

  Training mode normalises with the batch mean and biased variance E[x^2] - E[x]^2 (as flax and
  TF's synchronised BN compute it) and moves the running statistics with that same biased
  variance: running = (1 - momentum) * running + momentum * batch. `center=False` drops beta
  (the last projection-head layer).
  """

  def __init__(self, channels: int, momentum: float, eps: float = 1e-5, center: bool = True):
    super().__init__(channels, eps=eps, momentum=momentum)
    if not center:
      self.register_parameter('bias', None)

  def reset_parameters(self) -> None:
    self.reset_running_stats()
    nn.init.ones_(self.weight)
    if self.bias is not None:
      nn.init.zeros_(self.bias)

  def _check_input_dim(self, x: torch.Tensor) -> None:
    if x.dim() not in (2, 4):
      raise ValueError(f'BatchNorm expects [N, C] or [N, C, H, W], got shape {tuple(x.shape)}')

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    self._check_input_dim(x)
    if not self.training:
      return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                          False, 0.0, self.eps)
    dims = [0, 2, 3] if x.dim() == 4 else [0]
    mean = x.mean(dims)
    var = torch.clamp((x * x).mean(dims) - mean * mean, min=0.0)
    with torch.no_grad():
      self.running_mean.lerp_(mean.detach(), self.momentum)
      self.running_var.lerp_(var.detach(), self.momentum)
      self.num_batches_tracked.add_(1)
    shape = [1, -1] + [1] * (x.dim() - 2)
    multiplier = torch.rsqrt(var + self.eps) * self.weight
    out = (x - mean.view(shape)) * multiplier.view(shape)
    return out if self.bias is None else out + self.bias.view(shape)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF 'SAME': (before, after); the odd cell goes after."""
  total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class SameMaxPool2d(nn.Module):
  """TF max_pool2d(padding='SAME'); pads with -inf, so padding never wins a window.

  The one change that makes torchvision's ResNet-50 exact: `model.maxpool = SameMaxPool2d()`.
  """

  def __init__(self, kernel_size: int = 3, stride: int = 2):
    super().__init__()
    self.kernel_size, self.stride = kernel_size, stride

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    top, bottom = _same_padding(x.shape[2], self.kernel_size, self.stride)
    left, right = _same_padding(x.shape[3], self.kernel_size, self.stride)
    x = F.pad(x, (left, right, top, bottom), value=float('-inf'))
    return F.max_pool2d(x, self.kernel_size, self.stride)


def _same_avg_pool_2x2_stride1(x: torch.Tensor) -> torch.Tensor:
  """TF avg_pool(2, 1, 'SAME'): pads (0, 1) and averages over the real cells only."""
  sums = F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2, 1, divisor_override=1)
  ones = torch.ones_like(x[:1, :1])
  counts = F.avg_pool2d(F.pad(ones, (0, 1, 0, 1)), 2, 1, divisor_override=1)
  return sums / counts


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
  # Official fixed padding (strided) and SAME (stride 1) agree for odd kernels: (k-1)/2 each side.
  return nn.Conv2d(c_in, c_out, kernel, stride, padding=(kernel - 1) // 2, bias=False)


class _Layers:
  """BN settings shared by every layer."""

  def __init__(self, momentum: float, eps: float):
    self.momentum, self.eps = momentum, eps

  def bn(self, channels: int, center: bool = True) -> BatchNorm:
    return BatchNorm(channels, self.momentum, self.eps, center)


class _Block(nn.Module):
  """A residual block's projection shortcut (1x1 conv + BN; ResNet-D with SK: average pool, then
  1x1), as `shortcut_conv`/`shortcut_bn` of the block itself (the flax parameter names)."""

  def _add_shortcut(self, c_in, c_out, stride, projection, resnet_d, layers: _Layers) -> None:
    self.stride, self.projection, self.resnet_d = stride, projection, resnet_d
    if projection:
      self.shortcut_conv = _conv(c_in, c_out, 1, 1 if resnet_d else stride)
      self.shortcut_bn = layers.bn(c_out)

  def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
    if not self.projection:
      return x
    if self.resnet_d:
      if self.stride > 1:
        x = F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2, self.stride)  # fixed padding, then VALID
      else:
        x = _same_avg_pool_2x2_stride1(x)
    return self.shortcut_bn(self.shortcut_conv(x))


class SelectiveKernelConv(nn.Module):
  """Official SK_Conv2D: two 3x3 streams from one conv, mixed by per-channel softmax weights."""

  def __init__(self, c_in: int, filters: int, stride: int, sk_ratio: float, layers: _Layers):
    super().__init__()
    mid = max(int(filters * sk_ratio), _SK_MIN_DIM)
    self.conv_0, self.bn_0 = _conv(c_in, 2 * filters, 3, stride), layers.bn(2 * filters)
    self.conv_1, self.bn_1 = _conv(filters, mid, 1), layers.bn(mid)
    self.conv_2 = _conv(mid, 2 * filters, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    streams = torch.stack(F.relu(self.bn_0(self.conv_0(x))).chunk(2, dim=1))  # [2, N, f, H, W]
    fused = streams.sum(0).mean((2, 3), keepdim=True)
    fused = F.relu(self.bn_1(self.conv_1(fused)))
    mixing = torch.stack(self.conv_2(fused).chunk(2, dim=1)).softmax(0)  # [2, N, f, 1, 1]
    return (streams * mixing).sum(0)


class BottleneckBlock(_Block):
  """1x1 f -> 3x3 f (or SK conv) stride s -> 1x1 4f, post-activation."""

  def __init__(self, c_in, filters, stride, projection, sk_ratio, layers: _Layers):
    super().__init__()
    self._add_shortcut(c_in, 4 * filters, stride, projection, sk_ratio > 0, layers)
    self.conv_0, self.bn_0 = _conv(c_in, filters, 1), layers.bn(filters)
    self.sk = sk_ratio > 0
    if self.sk:
      self.sk_conv = SelectiveKernelConv(filters, filters, stride, sk_ratio, layers)
    else:
      self.conv_1, self.bn_1 = _conv(filters, filters, 3, stride), layers.bn(filters)
    self.conv_2, self.bn_2 = _conv(filters, 4 * filters, 1), layers.bn(4 * filters)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    shortcut = self._shortcut(x)
    x = F.relu(self.bn_0(self.conv_0(x)))
    x = self.sk_conv(x) if self.sk else F.relu(self.bn_1(self.conv_1(x)))
    return F.relu(self.bn_2(self.conv_2(x)) + shortcut)


class BasicBlock(_Block):
  """3x3 f stride s -> 3x3 f, post-activation (never SK conv; ResNet-D shortcut with SK)."""

  def __init__(self, c_in, filters, stride, projection, sk_ratio, layers: _Layers):
    super().__init__()
    self._add_shortcut(c_in, filters, stride, projection, sk_ratio > 0, layers)
    self.conv_0, self.bn_0 = _conv(c_in, filters, 3, stride), layers.bn(filters)
    self.conv_1, self.bn_1 = _conv(filters, filters, 3), layers.bn(filters)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    shortcut = self._shortcut(x)
    x = F.relu(self.bn_0(self.conv_0(x)))
    return F.relu(self.bn_1(self.conv_1(x)) + shortcut)


class Stem(nn.Module):
  """Returns (initial_conv before BN, initial_max_pool)."""

  def __init__(self, width: int, half_width: int, sk: bool, cifar_stem: bool, layers: _Layers):
    super().__init__()
    self.kind = 'cifar' if cifar_stem else 'deep' if sk else 'plain'
    if self.kind == 'cifar':
      self.conv_0, self.bn_0 = _conv(3, width, 3), layers.bn(width)
    elif self.kind == 'deep':  # ResNet-D deep stem
      self.conv_0, self.bn_0 = _conv(3, half_width, 3, 2), layers.bn(half_width)
      self.conv_1, self.bn_1 = _conv(half_width, half_width, 3), layers.bn(half_width)
      self.conv_2, self.bn_2 = _conv(half_width, width, 3), layers.bn(width)
    else:
      self.conv_0, self.bn_0 = _conv(3, width, 7, 2), layers.bn(width)
    self.maxpool = SameMaxPool2d(3, 2)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if self.kind == 'cifar':
      initial_conv = self.conv_0(x)
      return initial_conv, F.relu(self.bn_0(initial_conv))  # no max-pool
    if self.kind == 'deep':
      x = F.relu(self.bn_0(self.conv_0(x)))
      x = F.relu(self.bn_1(self.conv_1(x)))
      initial_conv = self.conv_2(x)
      x = F.relu(self.bn_2(initial_conv))
    else:
      initial_conv = self.conv_0(x)
      x = F.relu(self.bn_0(initial_conv))
    return initial_conv, self.maxpool(x)


def blocks_and_type(architecture: dict) -> tuple[tuple[int, ...], str]:
  """(blocks per stage, 'basic' | 'bottleneck') of an architecture dict."""
  depth = architecture['depth']
  blocks = architecture.get('blocks_per_stage')
  block_type = architecture.get('block_type')
  if blocks is None:
    if depth not in _BLOCKS_FOR_DEPTH:
      raise ValueError(f'depth={depth} is not one of {sorted(_BLOCKS_FOR_DEPTH)}; give '
                       'blocks_per_stage and block_type')
    blocks = _BLOCKS_FOR_DEPTH[depth]
  return tuple(int(b) for b in blocks), block_type or ('basic' if depth < 50 else 'bottleneck')


class ResNet(nn.Module):
  """Official SimCLR ResNet v1: [N, 3, H, W] in [0, 1] -> dict of endpoints (NCHW)."""

  def __init__(self, architecture: dict):
    super().__init__()
    blocks, block_type = blocks_and_type(architecture)
    w, sk_ratio = architecture['width_multiplier'], architecture['sk_ratio']
    layers = _Layers(1.0 - architecture['bn_momentum'], architecture['bn_epsilon'])
    self.stem = Stem(int(64 * w), int(64 * w // 2), sk_ratio > 0, architecture['cifar_stem'],
                     layers)
    block_cls, expansion = (BottleneckBlock, 4) if block_type == 'bottleneck' else (BasicBlock, 1)
    c_in = int(64 * w)
    for g, num_blocks in enumerate(blocks):
      filters = int(64 * 2**g * w)  # Keras truncates float filters with int()
      group = nn.Sequential()
      for b in range(num_blocks):
        group.add_module(f'block_{b}', block_cls(c_in, filters, 2 if g and not b else 1, b == 0,
                                                 sk_ratio, layers))
        c_in = expansion * filters
      self.add_module(f'stage{g + 1}', group)
    self.num_features = c_in

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    initial_conv, x = self.stem(x)
    out = {'initial_conv': initial_conv, 'initial_max_pool': x}
    for g in range(1, 5):
      x = out[f'block_group{g}'] = getattr(self, f'stage{g}')(x)
    out['final_avg_pool'] = x.mean((2, 3))
    return out


class LinearLayer(nn.Module):
  """Official LinearLayer: dense (bias only without BN), then optionally BN (no ReLU)."""

  def __init__(self, c_in, c_out, use_bias, use_bn, layers: _Layers | None = None):
    super().__init__()
    self.dense = nn.Linear(c_in, c_out, bias=use_bias and not use_bn)
    self.bn = layers.bn(c_out, center=use_bias) if use_bn else None

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.dense(x)
    return x if self.bn is None else self.bn(x)


class SimCLR(nn.Module):
  """Encoder, projection head and supervised head; `forward` returns the SavedModel's outputs.

  The supervised head reads `hiddens[ft_proj_selector]` (0: encoder output, 1: first head layer,
  as SimCLRv2 fine-tuning). Gradients flow through every layer (fine-tuning); the official
  pretraining probe's stop-gradient is `supervised_head_stop_gradient=True`.
  """

  def __init__(self, architecture: dict, supervised_head_stop_gradient: bool = False):
    super().__init__()
    self.architecture = dict(architecture)
    self.supervised_head_stop_gradient = supervised_head_stop_gradient
    self.ft_proj_selector = architecture['ft_proj_selector']
    self.encoder = ResNet(architecture)
    layers = _Layers(1.0 - architecture['bn_momentum'], architecture['bn_epsilon'])
    width, num_layers = self.encoder.num_features, architecture['num_proj_layers']
    self.projection_head = nn.ModuleDict()
    for j in range(num_layers):
      last = j == num_layers - 1
      self.projection_head[f'nl_{j}'] = LinearLayer(
        width, architecture['proj_out_dim'] if last else width, not last, True, layers)
    head_width = architecture['proj_out_dim'] if self.ft_proj_selector in (-1, num_layers) \
      and num_layers else width
    self.head_supervised = nn.Linear(head_width, architecture['num_classes'])

  def forward(self, images: torch.Tensor, endpoints: bool = False) -> dict[str, torch.Tensor]:
    """images [N, 3, H, W] float32 in [0, 1] -> {'features', 'projection', 'logits_sup'}
    (+ with `endpoints`: the official endpoints `initial_conv` ... `logits_sup`, NCHW)."""
    if images.dim() != 4 or images.shape[1] != 3:
      raise ValueError(f'images must be [N, 3, H, W] (NCHW, RGB in [0, 1]), got shape '
                       f'{tuple(images.shape)}; permute NHWC with images.permute(0, 3, 1, 2)')
    out = self.encoder(images)
    hiddens = [out['final_avg_pool']]
    for j, layer in enumerate(self.projection_head.values()):
      h = layer(hiddens[-1])
      hiddens.append(h if j == len(self.projection_head) - 1 else F.relu(h))
    head_input = hiddens[self.ft_proj_selector]
    if self.supervised_head_stop_gradient:
      head_input = head_input.detach()
    logits = self.head_supervised(head_input)
    result = {'features': hiddens[0], 'projection': hiddens[-1], 'logits_sup': logits}
    if endpoints:
      result.update(out, proj_head_input=hiddens[0], proj_head_output=hiddens[-1])
    return result


def read_architecture(directory: str) -> dict:
  """The architecture dict of an export (simclr_torch.json)."""
  path = os.path.join(directory, ARCHITECTURE_FILE)
  if not os.path.isfile(path):  # local: runs in the user's code, outside simclr_jax
    raise FileNotFoundError(f'{path} not found; export the checkpoint into {directory} with '
                            'python -m simclr_jax.export --format=torch')
  with open(path) as f:  # local: runs in the user's code, outside simclr_jax
    return json.load(f)


def load(directory: str, map_location: str = 'cpu', **kwargs) -> SimCLR:
  """The exported model: its architecture (simclr_torch.json) with model.pt loaded (strict)."""
  architecture = read_architecture(directory)
  model = SimCLR(architecture, **kwargs)
  state_dict = torch.load(os.path.join(directory, STATE_DICT_FILE), map_location=map_location,
                          weights_only=True)
  model.load_state_dict(state_dict, strict=True)
  return model


def load_torchvision_resnet(directory: str, exact: bool = True):
  """torchvision's resnet50 (101, 152) loading the exported encoder state_dict, strict.

  `exact=True` makes the one change that reproduces the official network: the stem's max-pool
  becomes TF 'SAME' (`SameMaxPool2d`). `fc` is the supervised head when it reads the encoder
  output (ft_proj_selector 0), else `torch.nn.Identity()` (the model returns the features).
  """
  import torchvision  # Only this helper needs it.

  depth = read_architecture(directory)['depth']
  state_dict = torch.load(os.path.join(directory, TORCHVISION_FILE.format(depth=depth)),
                          map_location='cpu', weights_only=True)
  build = getattr(torchvision.models, f'resnet{depth}')
  if 'fc.weight' in state_dict:
    model = build(num_classes=state_dict['fc.weight'].shape[0])
  else:
    model = build()
    model.fc = nn.Identity()
  if exact:
    model.maxpool = SameMaxPool2d(3, 2)
  model.load_state_dict(state_dict, strict=True)
  return model
