"""Import an official TF2 SimCLR(v2) SavedModel into a stage workdir that any stage can start from.

    python -m simclr_jax.import_tf2 --saved_model=r50_1x_sk0/saved_model \
        --config=configs/r50_1x.py --workdir=workdirs/r50_1x_sk0/imported

Only the SavedModel's `variables/` checkpoint is read (no graph is executed). Each variable's
Keras `full_name` comes from the checkpoint's object graph; since those names carry global
creation counters (`bottleneck_block_2`, `batch_norm_relu_15`, `dense_3`), variables are mapped
by position: block group, block order within the group, and the creation order of the convs and
BNs inside the block, which `models/resnet.py` documents and reproduces. The architecture is
inferred from the variables, checked against the config, and every variable of the configured
`SimCLRModel` must be matched by exactly one official variable of the same shape; otherwise one
error lists everything that does not fit. See docs/IMPORT_TF2.md.
"""

import collections
import dataclasses
import re
from typing import Any

import numpy as np
from absl import app, flags
from flax import traverse_util
from ml_collections import config_flags

from simclr_jax import checkpoints, cli, fs
from simclr_jax.models import load, resnet

_VALUE_ATTRIBUTE = 'VARIABLE_VALUE'
_OBJECT_GRAPH_KEY = '_CHECKPOINTABLE_OBJECT_GRAPH'
# Official BN variable -> (flax collection, flax leaf).
_BN_LEAVES = {
  'gamma': ('params', 'scale'),
  'beta': ('params', 'bias'),
  'moving_mean': ('batch_stats', 'mean'),
  'moving_variance': ('batch_stats', 'var'),
}
_BN_LAYERS = ('sync_batch_normalization', 'batch_normalization')  # global_bn True / False
_BLOCK_TYPES = {'bottleneck_block': 'bottleneck', 'residual_block': 'basic'}
_COUNTER = re.compile(r'^(?P<base>.+?)(?:_(?P<n>\d+))?$')
_GROUP = re.compile(r'^block_group(?P<g>[1-4])$')
_HEAD_LAYER = re.compile(r'^nl_(?P<j>\d+)$')


def _split_counter(name: str) -> tuple[str, int]:
  """'batch_norm_relu_15' -> ('batch_norm_relu', 15); Keras leaves the first one unnumbered."""
  match = _COUNTER.match(name)
  return match['base'], int(match['n'] or 0)


def read_variables(saved_model_dir: str) -> dict[str, np.ndarray]:
  """{Keras full_name: value} of every variable in `saved_model_dir/variables/`."""
  prefix = fs.join(saved_model_dir, 'variables', 'variables')
  if not fs.exists(prefix + '.index'):
    raise FileNotFoundError(
      f'{prefix}.index not found; --saved_model must be the saved_model/ folder of an official '
      'TF2 SimCLR export (the one holding variables/ and saved_model.pb)'
    )
  import tensorflow as tf  # Deferred: only reading a SavedModel needs TensorFlow.
  from tensorflow.core.protobuf import trackable_object_graph_pb2

  reader = tf.train.load_checkpoint(prefix)
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor(_OBJECT_GRAPH_KEY))
  variables = {}
  for node in graph.nodes:
    for attribute in node.attributes:
      if attribute.name != _VALUE_ATTRIBUTE:
        continue
      if attribute.full_name in variables:
        raise ValueError(f'{prefix}: two variables are named {attribute.full_name}; not an '
                         'official SimCLR SavedModel')
      variables[attribute.full_name] = np.asarray(reader.get_tensor(attribute.checkpoint_key))
  return variables


@dataclasses.dataclass
class _Block:
  """The convs and BNs of one official block (or of the stem), keyed by creation counter."""

  kind: str = 'stem'  # 'stem', 'bottleneck' or 'basic'
  selective_kernel: bool = False
  convs: dict[int, str] = dataclasses.field(default_factory=dict)  # counter -> full_name
  bns: dict[int, dict[str, str]] = dataclasses.field(default_factory=dict)  # counter -> leaves


def _block_layer_names(block: _Block, projection: bool) -> tuple[list[str], list[str]]:
  """Our conv and BN names in the official creation order (see models/resnet.py)."""
  if block.kind == 'stem':
    count = len(block.convs)
    return [f'conv_{i}' for i in range(count)], [f'bn_{i}' for i in range(count)]
  if block.kind == 'basic':
    convs, bns = ['conv_0', 'conv_1'], ['bn_0', 'bn_1']
  elif block.selective_kernel:
    convs = ['conv_0', 'sk_conv/conv_0', 'sk_conv/conv_1', 'sk_conv/conv_2', 'conv_2']
    bns = ['bn_0', 'sk_conv/bn_0', 'sk_conv/bn_1', 'bn_2']
  else:
    convs, bns = ['conv_0', 'conv_1', 'conv_2'], ['bn_0', 'bn_1', 'bn_2']
  if projection:  # Official blocks create the shortcut layers first.
    convs, bns = ['shortcut_conv'] + convs, ['shortcut_bn'] + bns
  return convs, bns


def _parse_encoder(names: list[str], unmapped: dict[str, str]) -> dict[int, dict[int, _Block]]:
  """{group (0 = stem): {block counter: _Block}} from the `resnet/...` full names."""
  groups: dict[int, dict[int, _Block]] = collections.defaultdict(dict)
  for name in names:
    parts = name.split('/')
    group, counter, block = 0, 0, None
    for part in parts[1:-2]:
      if match := _GROUP.match(part):
        group = int(match['g'])
      base, number = _split_counter(part)
      if base in _BLOCK_TYPES:
        counter, block = number, _BLOCK_TYPES[base]
    if (group == 0) != (block is None):
      unmapped[name] = 'a block outside a block_group, or a block_group without blocks'
      continue
    entry = groups[group].setdefault(counter, _Block(kind=block or 'stem'))
    entry.selective_kernel |= any(_split_counter(p)[0] == 'sk__conv2d' for p in parts)
    layer, number = _split_counter(parts[-2])
    if layer == 'conv2d' and parts[-1] == 'kernel' and number not in entry.convs:
      entry.convs[number] = name
    elif layer in _BN_LAYERS and parts[-1] in _BN_LEAVES \
        and parts[-1] not in entry.bns.get(number, {}):
      entry.bns.setdefault(number, {})[parts[-1]] = name
    else:
      unmapped[name] = 'not a conv kernel or BN variable, or a second one with its creation counter'
  return groups


def _map_encoder(names: list[str], mapped: dict, unmapped: dict[str, str]) -> None:
  """Adds {(collection, our path): official name} for the encoder to `mapped`."""
  for group, blocks in sorted(_parse_encoder(names, unmapped).items()):
    for index, counter in enumerate(sorted(blocks)):
      block = blocks[counter]
      scope = 'encoder/stem' if group == 0 else f'encoder/stage{group}/block_{index}'
      conv_names, bn_names = _block_layer_names(block, projection=index == 0)
      if len(block.convs) != len(conv_names) or len(block.bns) != len(bn_names):
        what = f'{block.kind} block{" with SK" if block.selective_kernel else ""}'
        reason = (f'{scope} has {len(block.convs)} convs and {len(block.bns)} BNs; a {what} '
                  f'has {len(conv_names)} and {len(bn_names)}')
        for name in [*block.convs.values(), *(n for b in block.bns.values() for n in b.values())]:
          unmapped[name] = reason
        continue
      for ours, number in zip(conv_names, sorted(block.convs)):
        mapped[('params', f'{scope}/{ours}/kernel')] = block.convs[number]
      for ours, number in zip(bn_names, sorted(block.bns)):
        for leaf, name in block.bns[number].items():
          collection, our_leaf = _BN_LEAVES[leaf]
          mapped[(collection, f'{scope}/{ours}/{our_leaf}')] = name


def _map_heads(names: list[str], mapped: dict, unmapped: dict[str, str]) -> None:
  """Adds the projection head (`nl_{j}`) and the supervised head to `mapped`."""
  for name in names:
    parts = name.split('/')
    layer, leaf = _split_counter(parts[-2])[0], parts[-1]
    if parts[0] == 'projection_head' and len(parts) >= 4 and _HEAD_LAYER.match(parts[1]):
      scope = f'projection_head/{parts[1]}'
      if layer == 'dense' and leaf == 'kernel':
        key = ('params', f'{scope}/dense/kernel')
      elif layer in _BN_LAYERS and leaf in _BN_LEAVES:
        collection, our_leaf = _BN_LEAVES[leaf]
        key = (collection, f'{scope}/bn/{our_leaf}')
      else:
        key = None
    elif parts[:2] == ['head_supervised', 'linear_layer'] and len(parts) == 4 and layer == 'dense':
      key = ('params', f'head_supervised/linear_layer/dense/{leaf}')
    else:
      key = None
    if key is None:
      unmapped[name] = 'not part of the official ResNet, projection head or supervised head'
    elif key in mapped:
      unmapped[name] = f'a second variable for {key[1]} (first: {mapped[key]})'
    else:
      mapped[key] = name


def map_variables(variables: dict[str, Any]) -> tuple[dict[tuple[str, str], str], dict[str, str]]:
  """({(collection, our '/'-path): official full name}, {unmapped full name: reason})."""
  mapped: dict[tuple[str, str], str] = {}
  unmapped: dict[str, str] = {}
  encoder = [n for n in variables if n.split('/')[0] == 'resnet']
  _map_encoder(encoder, mapped, unmapped)
  _map_heads([n for n in variables if n.split('/')[0] != 'resnet'], mapped, unmapped)
  return mapped, unmapped


def infer_architecture(variables: dict[str, Any]) -> dict[str, Any]:
  """The architecture of official variables ({full name: array or anything with `.shape`})."""

  shape = lambda name: tuple(variables[name].shape)
  groups = _parse_encoder([n for n in variables if n.split('/')[0] == 'resnet'], {})
  blocks = tuple(len(groups.get(g, {})) for g in range(1, 5))
  stage_blocks = [b for g in range(1, 5) for b in groups.get(g, {}).values()]
  kinds = {b.kind for b in stage_blocks}
  block_type = kinds.pop() if len(kinds) == 1 else None  # None: no blocks, or mixed types
  stem = groups.get(0, {}).get(0)
  stem_kernels = [shape(stem.convs[n]) for n in sorted(stem.convs)] if stem else []
  last_convs = [shape(n) for b in groups.get(4, {}).values() for n in b.convs.values()]
  num_features = max(s[-1] for s in last_convs) if last_convs else None
  expansion = 4 if block_type == 'bottleneck' else 1
  depths = [depth for depth in (18, 34, 50, 101, 152, 200)
            if resnet.blocks_for_depth(depth) == blocks
            and resnet.block_type_for_depth(depth) == block_type]

  head_layers = collections.defaultdict(list)  # nl index -> its dense kernels' shapes
  classifier = None
  for name in variables:
    parts = name.split('/')
    dense_kernel = _split_counter(parts[-2])[0] == 'dense' and parts[-1] == 'kernel'
    if (match := _HEAD_LAYER.match(parts[1] if len(parts) > 1 else '')) and dense_kernel \
        and parts[0] == 'projection_head':
      head_layers[int(match['j'])].append(shape(name))
    elif parts[0] == 'head_supervised' and dense_kernel:
      classifier = shape(name)
  last_head = head_layers[max(head_layers)] if head_layers else []
  return {
    'block_type': block_type,
    'blocks_per_stage': blocks,
    'depth': depths[0] if depths else None,  # None: not in the official depth table
    'width_multiplier': num_features / (512 * expansion) if num_features else None,
    'selective_kernels': any(b.selective_kernel for b in stage_blocks),
    'cifar_stem': len(stem_kernels) == 1 and stem_kernels[0][0] == 3,
    'num_features': num_features,
    'num_proj_layers': len(head_layers),
    'proj_out_dim': last_head[0][-1] if last_head else None,
    'num_classes': classifier[-1] if classifier else None,
  }


def _config_differences(arch: dict[str, Any], config) -> list[str]:
  """One line per architecture field where `config` disagrees with the SavedModel."""

  model = config.model
  diffs = []
  try:
    blocks = (tuple(model.blocks_per_stage) if model.blocks_per_stage is not None
              else resnet.blocks_for_depth(model.depth))
    block_type = resnet.block_type_for_depth(model.depth)
  except ValueError as error:
    blocks, block_type = None, None
    diffs.append(str(error))
  if block_type is not None and block_type != arch['block_type']:
    diffs.append(f'model.depth={model.depth} has {block_type} blocks, the SavedModel '
                 f'{arch["block_type"]} blocks')
  if blocks is not None and blocks != arch['blocks_per_stage']:
    fix = (f'model.depth={arch["depth"]}' if arch['depth'] else
           f'model.blocks_per_stage={arch["blocks_per_stage"]}')
    diffs.append(f'model.depth={model.depth} / model.blocks_per_stage={model.blocks_per_stage} '
                 f'give blocks {blocks}, the SavedModel has {arch["blocks_per_stage"]} (use {fix})')
  if arch['width_multiplier'] and not np.isclose(model.width_multiplier, arch['width_multiplier']):
    diffs.append(f'model.width_multiplier={model.width_multiplier}, the SavedModel has '
                 f'{arch["width_multiplier"]:g}')
  if (model.sk_ratio > 0) != arch['selective_kernels']:
    diffs.append(f'model.sk_ratio={model.sk_ratio} but the SavedModel has '
                 + ('selective kernels (use 0.0625)' if arch['selective_kernels'] else
                    'no selective kernels (use 0)'))
  cifar_stem = model.cifar_stem if model.cifar_stem is not None else config.data.image_size <= 32
  if cifar_stem != arch['cifar_stem']:
    diffs.append(f'model.cifar_stem={model.cifar_stem} with data.image_size='
                 f'{config.data.image_size} means cifar_stem={cifar_stem}, the SavedModel has '
                 f'cifar_stem={arch["cifar_stem"]}')
  for field in ('num_proj_layers', 'proj_out_dim'):
    if arch[field] is not None and model[field] != arch[field]:
      diffs.append(f'model.{field}={model[field]}, the SavedModel has {arch[field]}')
  return diffs


def _variable_problems(
  variables: dict[str, np.ndarray], expected: dict[tuple[str, str], Any]
) -> tuple[dict[tuple[str, str], np.ndarray], list[str]]:
  """({(collection, path): value} of the mapped variables, one line per variable that misfits)."""
  mapped, unmapped = map_variables(variables)
  values, problems = {}, []
  for key, name in sorted(mapped.items(), key=lambda item: item[1]):
    got = tuple(variables[name].shape)
    if key not in expected:
      problems.append(f'{name} (as {key[1]}) has no place in the configured model')
    elif tuple(expected[key].shape) != got:
      problems.append(f'{name} (as {key[1]}) expected {tuple(expected[key].shape)} got {got}')
    else:
      values[key] = np.asarray(variables[name], dtype=expected[key].dtype)
  problems += [f'{key[1]} {tuple(expected[key].shape)} ({key[0]}) missing from the SavedModel'
               for key in sorted(expected) if key not in mapped]
  problems += [f'{name} unmapped: {reason}' for name, reason in sorted(unmapped.items())]
  return values, problems


def convert_variables(
  variables: dict[str, np.ndarray],
  config,
  *,
  source: str = 'the SavedModel',
  config_name: str = 'the config',
) -> tuple[Any, Any, dict[str, Any]]:
  """(params, batch_stats, info) for `load.build(config, num_classes)` from official
  variables; raises ValueError listing every variable that does not fit."""
  arch = infer_architecture(variables)
  diffs = _config_differences(arch, config)
  try:
    # bn_axis_name=None: only shapes are needed here, outside any mesh.
    model = load.build(config, arch['num_classes'] or 1, bn_axis_name=None)
    abstract = load.abstract_variables(model, config.data.image_size)
  except ValueError as error:
    raise ValueError(f'{config_name} cannot build a model for {source} ({"; ".join(diffs)}): '
                     f'{error}') from error
  expected = {
    (collection, path): leaf
    for collection in ('params', 'batch_stats')
    for path, leaf in traverse_util.flatten_dict(abstract.get(collection, {}), sep='/').items()
  }
  values, problems = _variable_problems(variables, expected)
  if problems or diffs:
    context = f' ({"; ".join(diffs)})' if diffs else ''
    raise ValueError(
      f'{len(problems)} variables of {source} do not match {config_name}{context}: '
      f'{"; ".join(problems)}; fix the config to match the SavedModel (docs/IMPORT_TF2.md lists '
      'the overrides of each released model)'
    )
  trees = {}
  for collection in ('params', 'batch_stats'):
    flat = {path: value for (c, path), value in values.items() if c == collection}
    trees[collection] = traverse_util.unflatten_dict(flat, sep='/')
  info = {
    'saved_model': source,
    'architecture': arch,
    'num_variables': len(variables),
    'num_values': int(sum(np.size(v) for v in variables.values())),
  }
  return trees['params'], trees['batch_stats'], info


def import_saved_model(
  saved_model_dir: str, config, config_name: str = 'the config'
) -> tuple[Any, Any, dict[str, Any]]:
  """(params, batch_stats, info) of an official TF2 SavedModel, checked against `config`."""
  source = fs.absolute(saved_model_dir)
  return convert_variables(read_variables(saved_model_dir), config, source=source,
                           config_name=config_name)


def main(argv: list[str], flag_values) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  saved_model, config, workdir = (holder.value for holder in flag_values)
  directory = checkpoints.checkpoint_dir(workdir)
  if fs.isdir(directory) and fs.listdir(directory):
    raise ValueError(f'{directory} already holds checkpoints; import into a new stage workdir '
                     '(or delete that one)')
  params, batch_stats, info = import_saved_model(
    saved_model, config, config_flags.get_config_filename(flags.FLAGS['config'])
  )
  meta = checkpoints.run_meta(config, 0, stage='import_tf2', imported_from=info['saved_model'],
                              architecture=info['architecture'])
  path = checkpoints.save_variables(workdir, params, batch_stats, meta)
  # Read back as every stage and command will (models.load): the saved config's model must hold
  # exactly the imported variables, shape for shape.
  loaded = load.load(workdir, bn_axis_name=None)
  shapes = lambda tree: {k: tuple(np.shape(v)) for k, v in
                         traverse_util.flatten_dict(tree, sep='/').items()}
  abstract = load.abstract_variables(loaded.model, loaded.config.data.image_size)
  if shapes(abstract['params']) != shapes(loaded.variables['params']):
    raise ValueError(f'{path} does not load into the model of its saved config; report this')
  arch = info['architecture']
  print(f'Imported {info["num_variables"]} variables ({info["num_values"]:,} values) of '
        f'{info["saved_model"]}: {arch["block_type"]} blocks {arch["blocks_per_stage"]}, width '
        f'{arch["width_multiplier"]:g}, selective kernels {arch["selective_kernels"]}, '
        f'{arch["num_proj_layers"]} head layers, {arch["num_classes"]} classes -> {path} '
        f'(loads as a {loaded.num_classes}-class model)')


def _define_flags():
  holders = (
    flags.DEFINE_string('saved_model', None,
                        'Official TF2 SavedModel folder (the one holding variables/).'),
    config_flags.DEFINE_config_file('config', None, 'Config whose model matches the SavedModel.',
                                    lock_config=True),
    flags.DEFINE_string('workdir', None, 'Stage workdir to write checkpoints/ into.'),
  )
  flags.mark_flags_as_required(['saved_model', 'config', 'workdir'])
  return holders


if __name__ == '__main__':
  cli.run(_define_flags, main)
