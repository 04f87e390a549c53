"""Export a stage's newest checkpoint for use outside this code base.

    python -m simclr_jax.export --config=configs/demo.py --workdir=workdirs/demo/finetune \
        --output=exported/demo_finetune [--format=npz|saved_model|both|torch|all]

Writes into OUTPUT:

    model.npz      every variable as a plain array under its flattened name:
                   'params/encoder/stem/conv_0/kernel', 'batch_stats/encoder/.../mean', ...
    config.json    the run's config (as saved with the checkpoint): the architecture
    saved_model/   a TensorFlow SavedModel (jax2tf, inference mode): signature
                   'serving_default', input 'images' float32 [None, S, S, 3] in [0, 1]
                   (S = data.image_size; no mean/std normalisation, as in training),
                   outputs 'features' [None, D], 'projection' [None, proj_out_dim],
                   'logits_sup' [None, num_classes]
    model.pt, simclr_torch.py, simclr_torch.json (--format=torch or all; the torch extra):
                   a PyTorch state_dict and the self-contained module that loads it, with the
                   same outputs; torchvision_resnet50.pt for a plain ResNet-50 (torch_export.py)

`both` (the default) is npz + saved_model; `all` adds torch.

Reading them back: `load_npz(OUTPUT)` -> (model, variables) for `model.apply(variables, images,
train=False)`; `tf.saved_model.load(OUTPUT + '/saved_model').signatures['serving_default']`;
`simclr_torch.load(OUTPUT)` (PyTorch, NCHW images; docs/PYTORCH.md).
"""

import io
import json
import sys
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags
from flax import traverse_util
from ml_collections import config_flags

from simclr_jax import cli, fs, torch_export
from simclr_jax.models import load

NPZ_FILE = 'model.npz'
CONFIG_FILE = 'config.json'
SAVED_MODEL_DIR = 'saved_model'
FORMATS = ('npz', 'saved_model', 'both', 'torch', 'all')
OUTPUTS = ('features', 'projection', 'logits_sup')


def flatten_variables(params: Any, batch_stats: Any) -> dict[str, np.ndarray]:
  """{'params/encoder/stem/conv_0/kernel': array, 'batch_stats/...': array, ...}."""
  tree = {'params': params, 'batch_stats': batch_stats or {}}
  flat = traverse_util.flatten_dict(tree, sep='/')
  return {key: np.asarray(value) for key, value in flat.items()}


def unflatten_variables(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  """The inverse of `flatten_variables`: {'params': ..., 'batch_stats': ...}."""
  variables = traverse_util.unflatten_dict(dict(flat), sep='/')
  variables.setdefault('batch_stats', {})
  return variables


def inference_model(config: ml_collections.ConfigDict, params: Any):
  """The model of `config`'s architecture in single-device inference form (no BN axis)."""
  return load.build(config, load.num_classes_of(params), bn_axis_name=None)


def write_npz(output_dir: str, params: Any, batch_stats: Any, config_dict: dict) -> list[str]:
  """model.npz and config.json in `output_dir`; returns their paths."""
  fs.makedirs(output_dir)
  npz_path = fs.join(output_dir, NPZ_FILE)
  buffer = io.BytesIO()  # Zip needs a seekable file; an object store's writer is not.
  np.savez(buffer, **flatten_variables(params, batch_stats))
  fs.write_bytes(npz_path, buffer.getvalue())
  config_path = fs.join(output_dir, CONFIG_FILE)
  fs.write_text(config_path, json.dumps(config_dict, indent=2))
  return [npz_path, config_path]


def load_npz(output_dir: str):
  """(model, variables) from an export's model.npz and config.json."""
  npz_path = fs.join(output_dir, NPZ_FILE)
  config_path = fs.join(output_dir, CONFIG_FILE)
  for path in (npz_path, config_path):
    if not fs.exists(path):
      raise FileNotFoundError(f'{path} does not exist; export with --format=npz or both first')
  with np.load(io.BytesIO(fs.read_bytes(npz_path))) as arrays:
    variables = unflatten_variables({key: arrays[key] for key in arrays.files})
  config = ml_collections.ConfigDict(json.loads(fs.read_text(config_path)))
  return inference_model(config, variables['params']), variables


def inference_fn(model):
  """(variables, images [B, S, S, 3] float32) -> {'features', 'projection', 'logits_sup'}."""

  def apply(variables, images):
    out = model.apply(variables, images, train=False)
    return {key: out[key] for key in OUTPUTS}

  return apply


def write_saved_model(
  output_dir: str, model, params: Any, batch_stats: Any, image_size: int
) -> str:
  """A TensorFlow SavedModel of the model in inference mode (jax2tf); returns its directory.

  Variables become tf.Variables (not graph constants), so models above the 2 GiB protobuf
  limit (R152 3x) export too. The batch dimension is symbolic.
  """
  import tensorflow as tf  # Deferred: only the SavedModel format needs TensorFlow.
  from jax.experimental import jax2tf

  converted = jax2tf.convert(
    inference_fn(model),
    polymorphic_shapes=[None, f'(b, {image_size}, {image_size}, 3)'],
    with_gradient=False,
  )
  variables = {'params': params, 'batch_stats': batch_stats or {}}
  tf_variables = tf.nest.map_structure(lambda x: tf.Variable(np.asarray(x), trainable=False),
                                       variables)
  module = tf.Module()
  module.variables_list = tf.nest.flatten(tf_variables)  # Tracked, so they are saved.

  @tf.function(autograph=False, input_signature=[
    tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name='images')])
  def serve(images):
    return converted(tf_variables, images)

  module.serve = serve
  directory = fs.join(output_dir, SAVED_MODEL_DIR)
  tf.saved_model.save(module, directory, signatures={'serving_default': serve})
  return directory


def export(
  config: ml_collections.ConfigDict | None, workdir: str, output_dir: str, fmt: str = 'both'
) -> list[str]:
  """Exports the newest checkpoint of a stage workdir; returns the paths written.

  The architecture is the one saved with the checkpoint; `config` (if given) supplies
  data.image_size for the SavedModel input (default: the saved config's).
  """

  if fmt not in FORMATS:
    raise ValueError(f'--format={fmt} is not one of {", ".join(FORMATS)}; pick one of them')
  if fmt in ('torch', 'all'):
    torch_export.import_torch()  # Fail before writing anything.
  saved = load.load(workdir, config, bn_axis_name=None)
  params, batch_stats = saved.variables['params'], saved.variables['batch_stats']
  config_dict = json.loads(saved.config.to_json_best_effort())
  image_size = (config or saved.config).data.image_size
  written = []
  if fmt in ('npz', 'both', 'all'):
    written += write_npz(output_dir, params, batch_stats, config_dict)
  if fmt in ('saved_model', 'both', 'all'):
    written.append(write_saved_model(output_dir, saved.model, params, batch_stats, image_size))
  if fmt in ('torch', 'all'):
    written += torch_export.write_torch(output_dir, saved.model, params, batch_stats)
  return written


# ------------------------------------------------------------------------------------------ CLI


def _define_flags():
  config = config_flags.DEFINE_config_file(
    'config', None, 'Config file (image size); default: the config saved with the checkpoint.')
  workdir = flags.DEFINE_string('workdir', None, 'Stage workdir holding checkpoints/.')
  output = flags.DEFINE_string('output', None, 'Output directory.')
  fmt = flags.DEFINE_enum('format', 'both', list(FORMATS), 'What to write.')
  overwrite = flags.DEFINE_bool('overwrite', False, 'Replace files already in --output.')
  flags.mark_flags_as_required(['workdir', 'output'])
  return config, workdir, output, fmt, overwrite


def main(argv: list[str], flag_values) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  config, workdir, output, fmt, overwrite = (f.value for f in flag_values)
  existing = fs.listdir(output) if fs.isdir(output) else []
  if existing and not overwrite:
    sys.exit(f'error: --output={output} already holds {", ".join(existing[:5])}; pass '
             '--overwrite to replace them, or choose another --output')
  try:
    written = export(config, workdir, output, fmt)
  except (FileNotFoundError, ImportError, ValueError) as error:
    raise app.UsageError(str(error)) from None
  print('\n'.join(f'Wrote {path}' for path in written))


if __name__ == '__main__':
  cli.run(_define_flags, main)
