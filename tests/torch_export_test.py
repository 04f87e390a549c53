"""export --format=torch: the PyTorch module against the JAX model and the official fixtures.

The JAX model is the independent reference (itself proven against the official TF2 network in
import_tf2_test.py); every output and endpoint is compared in inference mode (BN on moving
statistics) and in training mode (batch statistics, plus the moving statistics it leaves), on
tiny networks covering each code path: CIFAR stem, ResNet-D deep stem and shortcuts, selective
kernels, basic and bottleneck blocks, odd feature maps, 1-3 head layers.
"""

import ast
import functools
import importlib.util
import io
import itertools
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import torchvision
from flax import traverse_util

from configs import default as default_lib
from configs import demo as demo_lib
from configs import official_fixture
from simclr_jax import checkpoints, export, fs, import_tf2, torch_export
from simclr_jax.models import load

import shared_paths

REPO = pathlib.Path(__file__).resolve().parent.parent
ENDPOINTS = ('initial_conv', 'initial_max_pool', 'block_group1', 'block_group2', 'block_group3',
             'block_group4', 'final_avg_pool', 'proj_head_input', 'proj_head_output', 'logits_sup')
# Issue 24 / fixture README: relative error max|ours - ref| / max(max|ref|, 1e-6).
TOLERANCE = {'eval': 1e-4, 'train': 2e-3}
_module_count = itertools.count()


def relative_error(ours, reference) -> float:
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  return float(np.abs(ours - reference).max() / max(np.abs(reference).max(), 1e-6))


def _config(name: str):
  """The architectures under test (the fixtures' come with their official variables)."""
  if name.startswith('fixture_'):
    return official_fixture.get_config(name.split('_')[1])
  config = demo_lib.get_config() if name == 'demo' else default_lib.get_config()
  model = config.model
  if name == 'sk_basic':  # ResNet-D deep stem and shortcuts on basic blocks, 2 head layers
    model.update(depth=18, blocks_per_stage=(1, 1, 1, 1), width_multiplier=0.125,
                 sk_ratio=0.0625, num_proj_layers=2, ft_proj_selector=-1)
    config.data.image_size = 48
  elif name == 'odd_bottleneck':  # 25x25 after the stem: SAME max-pool pads both sides
    model.update(depth=50, blocks_per_stage=(1, 2, 1, 1), width_multiplier=0.125,
                 num_proj_layers=1, ft_proj_selector=1)
    config.data.image_size = 50
  elif name == 'r50':
    model.update(depth=50, width_multiplier=1.0, cifar_stem=False, num_proj_layers=1)
    config.data.image_size = 64
  return config


def _random_variables(model, image_size: int, seed: int):
  """Variables with nothing trivial (as the fixtures': no zero gamma, moving stats off 0/1)."""
  rng = np.random.default_rng(seed)
  abstract = load.abstract_variables(model, image_size)

  def draw(path, leaf):
    if path[-1] == 'kernel':
      return rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape)
    if path[-1] in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, leaf.shape)
    return rng.normal(0, 0.1, leaf.shape)

  trees = []
  for collection in ('params', 'batch_stats'):
    flat = traverse_util.flatten_dict(abstract[collection])
    trees.append(traverse_util.unflatten_dict(
      {path: draw(path, leaf).astype(np.float32) for path, leaf in flat.items()}))
  return trees


@functools.cache
def _case(name: str, tmp_root: str):
  """(config, params, batch_stats, export dir, images) of a checkpoint exported to PyTorch."""
  config = _config(name)
  size = config.data.image_size
  if name.startswith('fixture_'):
    root = shared_paths.OFFICIAL_TF2_FIXTURES / f'bottleneck_{name.split("_")[1]}'
    variables = import_tf2.read_variables(str(root / 'saved_model'))
    params, batch_stats, _ = import_tf2.convert_variables(variables, config)
    images = np.load(root / 'outputs.npz')['inputs']
  else:
    model = load.build(config, 1000 if name == 'r50' else 10, bn_axis_name=None)
    params, batch_stats = _random_variables(model, size, seed=len(name))
    images = np.random.default_rng(0).uniform(size=(4, size, size, 3)).astype(np.float32)
  workdir, output = f'{tmp_root}/{name}/stage', f'{tmp_root}/{name}/torch'
  checkpoints.save_variables(workdir, params, batch_stats,
                             checkpoints.run_meta(config, 0, stage='pretrain'))
  written = export.export(None, workdir, output, fmt='torch')
  return config, params, batch_stats, output, images, written


@pytest.fixture(scope='module')
def tmp_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('torch_export'))


def _module(output: str, path: str | None = None):
  """The simclr_torch.py written into `output`, imported from there (not from the package)."""
  spec = importlib.util.spec_from_file_location(f'simclr_torch_{next(_module_count)}',
                                                path or f'{output}/simclr_torch.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _jax_model(config, params):
  return load.build(config, load.num_classes_of(params), bn_axis_name=None,
                    supervised_head_stop_gradient=False)


def _jax_endpoints(config, params, batch_stats, images, train: bool):
  """({endpoint: NHWC array}, new batch_stats or None) of the JAX model."""
  model = _jax_model(config, params)

  @jax.jit
  def apply(params, batch_stats, images):
    mutable = ['intermediates', 'batch_stats'] if train else ['intermediates']
    _, state = model.apply({'params': params, 'batch_stats': batch_stats}, images, train=train,
                           mutable=mutable)
    return state

  state = jax.device_get(apply(params, batch_stats, images))
  flat = traverse_util.flatten_dict(state['intermediates'], sep='/')
  endpoints = {path.split('/')[-1]: np.asarray(value[0]) for path, value in flat.items()}
  return endpoints, state.get('batch_stats')


def _torch_endpoints(net, images, train: bool) -> dict[str, np.ndarray]:
  net.train(train)
  with torch.no_grad():
    out = net(torch.from_numpy(images).permute(0, 3, 1, 2), endpoints=True)
  to_nhwc = lambda x: x.permute(0, 2, 3, 1) if x.dim() == 4 else x
  return {key: to_nhwc(value).numpy() for key, value in out.items()}


def _bn_stat_errors(net, batch_stats) -> dict[str, float]:
  """Relative error of every BN running statistic of `net` against flax `batch_stats`."""
  expected = torch_export.state_dict_arrays({}, batch_stats)
  state = net.state_dict()
  return {name: relative_error(state[name].numpy(), value) for name, value in expected.items()
          if not name.endswith('num_batches_tracked')}


CASES = ['fixture_sk0', 'fixture_sk1', 'demo', 'sk_basic', 'odd_bottleneck']


@pytest.mark.parametrize('name', CASES)
def test_module_matches_jax_in_inference_and_training_mode(name, tmp_root):
  config, params, batch_stats, output, images, written = _case(name, tmp_root)
  assert sorted(p.rsplit('/', 1)[1] for p in written) == [
    'model.pt', 'simclr_torch.json', 'simclr_torch.py']
  net = _module(output).load(output)
  errors = {}
  for mode in ('eval', 'train'):
    ours = _torch_endpoints(net, images, mode == 'train')
    reference, new_stats = _jax_endpoints(config, params, batch_stats, images, mode == 'train')
    for key in ENDPOINTS:
      assert ours[key].shape == reference[key].shape, (mode, key)
      errors[f'{mode}/{key}'] = relative_error(ours[key], reference[key])
    for key, endpoint in (('features', 'final_avg_pool'), ('projection', 'proj_head_output')):
      np.testing.assert_array_equal(ours[key], ours[endpoint])
  # Training mode moved the running statistics exactly as flax moved its batch_stats.
  stat_errors = _bn_stat_errors(net, new_stats)
  errors['train/bn_stats'] = max(stat_errors.values())
  print(name, ' '.join(f'{k}={v:.1e}' for k, v in errors.items()))  # for `pytest -s`
  too_large = {k: v for k, v in errors.items() if v > TOLERANCE[k.split('/')[0]]}
  assert not too_large, f'{name}: PyTorch vs JAX beyond tolerance: {too_large}'


@pytest.mark.parametrize('variant', ['sk0', 'sk1'])
def test_fixture_exported_to_torch_reproduces_the_official_endpoints(variant, tmp_root):
  *_, output, images, _ = _case(f'fixture_{variant}', tmp_root)
  official = np.load(shared_paths.OFFICIAL_TF2_FIXTURES / f'bottleneck_{variant}' / 'outputs.npz')
  errors = {}
  for mode in ('eval', 'train'):
    net = _module(output).load(output)  # fresh: a training-mode call moves the statistics
    ours = _torch_endpoints(net, images, mode == 'train')
    for key in ENDPOINTS:
      errors[f'{mode}/{key}'] = relative_error(ours[key], official[f'{mode}/{key}'])
  print(variant, ' '.join(f'{k}={v:.1e}' for k, v in errors.items()))
  too_large = {k: v for k, v in errors.items() if v > TOLERANCE[k.split('/')[0]]}
  assert not too_large, f'{variant}: beyond the fixture README tolerance: {too_large}'


def _imported(node: ast.AST) -> list[str]:
  if isinstance(node, ast.Import):
    return [alias.name for alias in node.names]
  return [node.module] if isinstance(node, ast.ImportFrom) and node.module else []


def test_module_file_is_self_contained(tmp_root):
  *_, output, _, _ = _case('demo', tmp_root)
  with open(f'{output}/simclr_torch.py') as f:
    tree = ast.parse(f.read())
  top_level = {name.split('.')[0] for node in tree.body for name in _imported(node)}
  assert top_level <= {'json', 'math', 'os', 'torch'}, top_level
  everywhere = {name.split('.')[0] for node in ast.walk(tree) for name in _imported(node)}
  assert not everywhere & {'jax', 'flax', 'tensorflow', 'simclr_jax', 'numpy'}, everywhere
  with pytest.raises(FileNotFoundError, match='simclr_torch.json not found; export .* with '
                     'python -m simclr_jax.export --format=torch'):
    _module(output).load(tmp_root)


def test_torchvision_resnet50_loads_strict_and_needs_only_the_max_pool(tmp_root):
  config, params, batch_stats, output, images, written = _case('r50', tmp_root)
  assert any(p.endswith('/torchvision_resnet50.pt') for p in written)
  state_dict = torch.load(f'{output}/torchvision_resnet50.pt', weights_only=True)
  reference, _ = _jax_endpoints(config, params, batch_stats, images, train=False)
  nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
  errors = {}
  for exact in (True, False):
    net = torchvision.models.resnet50()  # 1000 classes: fc is the supervised head
    if exact:
      net.maxpool = _module(output).SameMaxPool2d()
    net.load_state_dict(state_dict, strict=True)
    net.eval()
    features = torch.nn.Sequential(*list(net.children())[:-1])
    with torch.no_grad():
      logits, pooled = net(nchw).numpy(), features(nchw).flatten(1).numpy()
    errors[exact] = (relative_error(pooled, reference['final_avg_pool']),
                     relative_error(logits, reference['logits_sup']))
  print('torchvision resnet50 (features, logits): exact', errors[True], 'stock', errors[False])
  assert max(errors[True]) < TOLERANCE['eval'], errors
  # Stock MaxPool2d(3, 2, padding=1) takes other windows: an error far beyond float32 rounding.
  assert min(errors[False]) > 100 * TOLERANCE['eval'], errors
  helper = _module(output).load_torchvision_resnet(output).eval()
  with torch.no_grad():
    assert relative_error(helper(nchw).numpy(), reference['logits_sup']) < TOLERANCE['eval']


# Depth 18-200, widths 1-4, SK or not, both stems: the same variables, name for name and shape
# for shape (PyTorch layout), without allocating them (meta device; r152 3x has 795 M values).
@pytest.mark.parametrize('depth,width,sk_ratio,cifar_stem', [
  (18, 1, 0.0, True), (34, 2, 0.0625, False), (50, 1, 0.0625, False), (101, 2, 0.0, False),
  (152, 3, 0.0625, False), (200, 4, 0.0, False)])
def test_every_depth_and_width_has_the_variables_of_the_jax_model(depth, width, sk_ratio,
                                                                   cifar_stem):
  config = default_lib.get_config()
  config.model.update(depth=depth, width_multiplier=width, sk_ratio=sk_ratio,
                      cifar_stem=cifar_stem)
  model = load.build(config, 1000, bn_axis_name=None)
  abstract = load.abstract_variables(model, 64)
  expected = {}
  for collection in ('params', 'batch_stats'):
    for path, leaf in traverse_util.flatten_dict(abstract[collection]).items():
      shape = leaf.shape
      if path[-1] == 'kernel':  # PyTorch: conv OIHW, linear [out, in]
        shape = (shape[3], shape[2], *shape[:2]) if len(shape) == 4 else shape[::-1]
      expected[torch_export.torch_name(path)] = tuple(shape)
  simclr_torch = _module('', str(REPO / 'simclr_jax' / 'torch_bridge' / 'simclr_torch.py'))
  with torch.device('meta'):
    net = simclr_torch.SimCLR(torch_export.architecture(model))
  state = {name: tuple(value.shape) for name, value in net.state_dict().items()
           if not name.endswith('num_batches_tracked')}
  assert state == expected


def test_only_plain_resnets_get_a_torchvision_state_dict():
  arch = dict(depth=50, block_type='bottleneck', blocks_per_stage=[3, 4, 6, 3],
              width_multiplier=1.0, sk_ratio=0.0, cifar_stem=False)
  assert torch_export.torchvision_incompatibility(arch) is None
  for change, reason in (({'sk_ratio': 0.0625}, 'selective kernels'),
                         ({'width_multiplier': 2.0}, 'width_multiplier'),
                         ({'blocks_per_stage': [1, 1, 1, 1]}, 'blocks'),
                         ({'depth': 18, 'block_type': 'basic'}, 'blocks'),
                         ({'cifar_stem': True}, 'CIFAR stem')):
    assert reason in torch_export.torchvision_incompatibility({**arch, **change}), change


def test_missing_torch_names_the_extra(monkeypatch, tmp_path):
  import builtins

  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == 'torch':
      raise ImportError('No module named torch')
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', no_torch)
  with pytest.raises(ImportError, match=r"pip install -e '\.\[torch\]'"):
    torch_export.write_torch('/nonexistent', None, {}, {})
  output = tmp_path / 'out'
  with pytest.raises(ImportError, match=r"^--format=torch needs PyTorch; install the torch extra"):
    export.export(None, str(tmp_path / 'stage'), str(output), fmt='all')
  assert not output.exists()  # nothing written before the error


@pytest.mark.slow
def test_official_saved_model_to_pytorch_with_the_two_commands(tmp_path):
  """docs/PYTORCH.md: import_tf2, then export --format=torch, then the PyTorch snippet."""
  root = shared_paths.OFFICIAL_TF2_FIXTURES / 'bottleneck_sk1'
  workdir, output = tmp_path / 'imported', tmp_path / 'torch'
  commands = (
    ['simclr_jax.import_tf2', f'--saved_model={root / "saved_model"}',
     '--config=configs/official_fixture.py:sk1', f'--workdir={workdir}'],
    ['simclr_jax.export', '--format=torch', f'--workdir={workdir}', f'--output={output}'],
  )
  for command in commands:
    proc = subprocess.run([sys.executable, '-m', *command], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'simclr_torch.py' in proc.stdout and 'torchvision' not in proc.stdout  # SK: no torchvision

  sys.path.insert(0, str(output))  # as a user would: `import simclr_torch` from the export
  try:
    import simclr_torch
  finally:
    sys.path.remove(str(output))
    sys.modules.pop('simclr_torch', None)
  assert pathlib.Path(simclr_torch.__file__).parent == output
  official = np.load(root / 'outputs.npz')
  model = simclr_torch.load(str(output)).eval()
  with torch.no_grad():
    out = model(torch.from_numpy(official['inputs']).permute(0, 3, 1, 2))
  for key, endpoint in (('features', 'final_avg_pool'), ('projection', 'proj_head_output'),
                        ('logits_sup', 'logits_sup')):
    assert relative_error(out[key].numpy(), official[f'eval/{endpoint}']) < TOLERANCE['eval'], key


def test_export_to_a_bucket(emulator, tmp_root):
  """model.pt and its companions go through the fs seam: gs:// outputs work."""
  config, params, batch_stats, _, images, _ = _case('demo', tmp_root)
  model = load.build(config, load.num_classes_of(params), bn_axis_name=None)
  written = torch_export.write_torch('gs://bkt/exported', model, params, batch_stats)
  assert written[0] == 'gs://bkt/exported/model.pt'
  assert set(emulator.objects('bkt', 'exported/')) == {
    'exported/model.pt', 'exported/simclr_torch.py', 'exported/simclr_torch.json'}
  state_dict = torch.load(io.BytesIO(fs.read_bytes(written[0])), weights_only=True)
  expected = torch_export.state_dict_arrays(params, batch_stats)
  assert state_dict.keys() == expected.keys()
  for name, value in expected.items():
    np.testing.assert_array_equal(state_dict[name].numpy(), value, err_msg=name)
