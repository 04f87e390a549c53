"""Our variables as PyTorch state_dicts: for the shipped simclr_torch.py module and torchvision.

`export --format=torch` writes into OUTPUT (docs/PYTORCH.md):

    model.pt                    state_dict of `simclr_torch.SimCLR` (names mirror ours:
                                'encoder.stage1.block_0.conv_0.weight', ...)
    simclr_torch.py             the self-contained PyTorch module (imports torch only)
    simclr_torch.json           the architecture it builds (`architecture`)
    torchvision_resnet{D}.pt    plain ResNet-50/101/152 1x only: the encoder (and the supervised
                                head as `fc` when it reads the encoder output) under torchvision's
                                names, exact once `model.maxpool = simclr_torch.SameMaxPool2d()`

The conversion is NumPy only; torch is imported when the files are written.
"""

import importlib.resources
import io
import json
import re
from typing import Any

import numpy as np
from flax import traverse_util

from simclr_jax import fs
from simclr_jax.models import resnet, simclr

STATE_DICT_FILE = 'model.pt'
MODULE_FILE = 'simclr_torch.py'
ARCHITECTURE_FILE = 'simclr_torch.json'
TORCHVISION_FILE = 'torchvision_resnet{depth}.pt'
TORCHVISION_DEPTHS = (50, 101, 152)  # torchvision's bottleneck ResNets with the official blocks.
# Our BN leaf -> PyTorch BatchNorm name.
_BN_LEAVES = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}
# Our names -> torchvision's (models/resnet.py: conv1/bn1, layer{g}.{b}.conv{i}/bn{i}, downsample).
_TORCHVISION_NAMES = (
  (re.compile(r'^encoder\.stem\.(conv|bn)_0\.'), r'\g<1>1.'),
  (re.compile(r'^encoder\.stage(\d)\.block_(\d+)\.shortcut_conv\.'), r'layer\1.\2.downsample.0.'),
  (re.compile(r'^encoder\.stage(\d)\.block_(\d+)\.shortcut_bn\.'), r'layer\1.\2.downsample.1.'),
  (re.compile(r'^encoder\.stage(\d)\.block_(\d+)\.(conv|bn)_0\.'), r'layer\1.\2.\g<3>1.'),
  (re.compile(r'^encoder\.stage(\d)\.block_(\d+)\.(conv|bn)_1\.'), r'layer\1.\2.\g<3>2.'),
  (re.compile(r'^encoder\.stage(\d)\.block_(\d+)\.(conv|bn)_2\.'), r'layer\1.\2.\g<3>3.'),
  (re.compile(r'^head_supervised\.'), 'fc.'),
)


def architecture(model: simclr.SimCLRModel) -> dict[str, Any]:
  """What simclr_torch.SimCLR needs to build the same network as `model` (JSON-ready)."""
  encoder = resnet.ResNet(depth=model.depth, width_multiplier=model.width_multiplier,
                          sk_ratio=model.sk_ratio, cifar_stem=model.cifar_stem,
                          blocks_per_stage=model.blocks_per_stage, block_type=model.block_type)
  block_type, blocks = encoder.architecture()
  return {
    'depth': model.depth,
    'width_multiplier': float(model.width_multiplier),
    'sk_ratio': float(model.sk_ratio),
    'cifar_stem': bool(model.cifar_stem),
    'blocks_per_stage': list(blocks),
    'block_type': block_type,
    'num_features': encoder.num_features,
    'num_proj_layers': model.num_proj_layers,
    'proj_out_dim': model.proj_out_dim,
    'num_classes': model.num_classes,
    'ft_proj_selector': model.ft_proj_selector,
    # Official decay: moving = m * moving + (1 - m) * batch; simclr_torch uses 1 - m.
    'bn_momentum': float(model.bn_momentum),
    'bn_epsilon': float(encoder.bn_epsilon),
  }


def torch_name(path: tuple[str, ...]) -> str:
  """simclr_torch.SimCLR's name of one of our variables, e.g. ('encoder', 'stem', 'bn_0',
  'var') -> 'encoder.stem.bn_0.running_var'."""
  *scope, leaf = path
  if scope[0] == 'head_supervised':  # head_supervised/linear_layer/dense -> one nn.Linear
    scope = ['head_supervised']
  # Kernels become weights; BN leaves get PyTorch's names; a dense bias stays 'bias'.
  return '.'.join([*scope, 'weight' if leaf == 'kernel' else _BN_LEAVES.get(leaf, leaf)])


def torch_layout(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  """A variable in PyTorch's layout: conv kernels HWIO -> OIHW, dense [in, out] -> [out, in]."""
  if path[-1] == 'kernel':
    value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
  return np.ascontiguousarray(value, dtype=np.float32)


def state_dict_arrays(params: Any, batch_stats: Any) -> dict[str, np.ndarray]:
  """{simclr_torch.SimCLR state_dict name: array}: every variable of ours, plus each BN's
  `num_batches_tracked` (0)."""
  arrays = {}
  for tree in (params, batch_stats or {}):
    for path, value in traverse_util.flatten_dict(tree).items():
      arrays[torch_name(path)] = torch_layout(path, np.asarray(value))
  for name in [n for n in arrays if n.endswith('.running_mean')]:
    arrays[name.replace('.running_mean', '.num_batches_tracked')] = np.array(0, np.int64)
  return arrays


def torchvision_incompatibility(arch: dict[str, Any]) -> str | None:
  """Why torchvision's resnet{depth} cannot hold this encoder, or None when it can."""
  if arch['depth'] not in TORCHVISION_DEPTHS or arch['block_type'] != 'bottleneck' or \
      tuple(arch['blocks_per_stage']) != resnet.blocks_for_depth(arch['depth']):
    return (f'blocks {arch["blocks_per_stage"]} ({arch["block_type"]}) are not those of '
            f'torchvision resnet{"/".join(map(str, TORCHVISION_DEPTHS))}')
  if arch['width_multiplier'] != 1:
    return 'width_multiplier != 1 (torchvision wide_resnet widens only the inner 3x3 convs)'
  if arch['sk_ratio'] > 0:
    return 'selective kernels and the ResNet-D stem are not in torchvision'
  if arch['cifar_stem']:
    return 'the CIFAR stem (3x3 stride 1, no max-pool) is not torchvision\'s'
  return None


def torchvision_arrays(arrays: dict[str, np.ndarray], arch: dict[str, Any]) -> dict:
  """The encoder under torchvision's resnet names; the supervised head as `fc` when it reads the
  encoder output (ft_proj_selector 0), else no `fc` (use `model.fc = torch.nn.Identity()`)."""
  head_on_features = arch['ft_proj_selector'] in (0, -(arch['num_proj_layers'] + 1))
  renamed = {}
  for name, value in arrays.items():
    if name.startswith('projection_head.') or (
        name.startswith('head_supervised.') and not head_on_features):
      continue
    for pattern, replacement in _TORCHVISION_NAMES:
      name = pattern.sub(replacement, name)
    renamed[name] = value
  return renamed


def module_source() -> str:
  """The text of simclr_torch.py, shipped as package data (never imported here)."""
  folder = importlib.resources.files('simclr_jax').joinpath('torch_bridge')
  return folder.joinpath(MODULE_FILE).read_text()


def import_torch():
  """torch, or ImportError naming the extra to install."""
  try:
    import torch  # Deferred: only --format=torch needs PyTorch.
  except ImportError:
    raise ImportError("--format=torch needs PyTorch; install the torch extra: pip install -e "
                      "'.[torch]'") from None
  return torch


def _save(torch, path: str, arrays: dict[str, np.ndarray]) -> str:
  buffer = io.BytesIO()  # torch.save needs a seekable file; an object store's writer is not.
  torch.save({name: torch.from_numpy(value) for name, value in arrays.items()}, buffer)
  fs.write_bytes(path, buffer.getvalue())
  return path


def write_torch(
  output_dir: str, model: simclr.SimCLRModel, params: Any, batch_stats: Any
) -> list[str]:
  """model.pt, simclr_torch.py, simclr_torch.json (and torchvision_resnet{D}.pt when a plain
  ResNet-50/101/152 1x); returns the paths written."""
  torch = import_torch()
  arch = architecture(model)
  arrays = state_dict_arrays(params, batch_stats)
  fs.makedirs(output_dir)
  written = [_save(torch, fs.join(output_dir, STATE_DICT_FILE), arrays)]
  for name, text in ((MODULE_FILE, module_source()),
                     (ARCHITECTURE_FILE, json.dumps(arch, indent=2))):
    written.append(fs.join(output_dir, name))
    fs.write_text(written[-1], text)
  if torchvision_incompatibility(arch) is None:
    path = fs.join(output_dir, TORCHVISION_FILE.format(depth=arch['depth']))
    written.append(_save(torch, path, torchvision_arrays(arrays, arch)))
  return written
