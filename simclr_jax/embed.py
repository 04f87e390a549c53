"""Feature export: encoder features of a dataset split from a stage's newest checkpoint.

    python -m simclr_jax.embed --config=configs/demo.py --workdir=workdirs/demo/pretrain \
        --split=test --output=features.npz

Runs the encoder in inference mode on the config's dataset split with eval preprocessing (no
augmentation), in dataset order, and writes `features` [num_examples, dim] float32 and
`labels` [num_examples] int64. The architecture is the one saved with the checkpoint; the
config supplies the data.
"""

import io
import sys

import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from simclr_jax import cli, evaluation, fs, sharding
from simclr_jax.data import input as data_input
from simclr_jax.data import views
from simclr_jax.errors import ConfigError
from simclr_jax.models import load


def _define_flags():
  config = config_flags.DEFINE_config_file('config', None, 'Config file (for the data).')
  workdir = flags.DEFINE_string('workdir', None, 'Stage workdir holding checkpoints/.')
  split = flags.DEFINE_string('split', None, 'Split to embed (default: data.eval_split).')
  output = flags.DEFINE_string('output', None, 'Output .npz path.')
  output_key = flags.DEFINE_enum(
    'features', 'features', ['features', 'projection', 'logits_sup'],
    'Which output: encoder features (default), projection-head output, or classifier logits.')
  flags.mark_flags_as_required(['config', 'workdir', 'output'])
  return config, workdir, split, output, output_key


def embed(config, workdir: str, split: str | None = None, output: str = 'features'):
  """(features [N, D] float32, labels [N]) of a split, from the newest checkpoint in workdir."""
  saved = load.load(workdir, config)
  # The saved architecture, the requested data.
  model_config = ml_collections.ConfigDict(saved.config.to_dict())
  model_config.data = ml_collections.ConfigDict(config.data.to_dict())
  model = load.build(model_config, saved.num_classes)
  mesh = sharding.make_mesh()
  eval_data = data_input.make_eval_data(config, split or config.data.eval_split)
  feature_step = evaluation.make_feature_step(model, mesh, views.make_eval_view(config), output)
  params, batch_stats = sharding.replicate(
    mesh, (saved.variables['params'], saved.variables['batch_stats']))
  features, labels = evaluation.extract_features(feature_step, params, batch_stats, eval_data, mesh)
  logging.info('Embedded %d examples of split %r: features %s', len(labels), split, features.shape)
  return features.astype(np.float32), labels.astype(np.int64)


def main(argv: list[str], flag_values) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')

  config, workdir, split, output, output_key = (holder.value for holder in flag_values)
  try:
    features, labels = embed(config, workdir, split, output_key)
  except (ConfigError, FileNotFoundError) as error:
    if cli.verbose():
      raise
    sys.exit(f'error: {error}')  # One line (SIMCLR_VERBOSE=1 for the traceback).
  fs.makedirs(fs.parent(fs.absolute(output)))
  buffer = io.BytesIO()  # Zip needs a seekable file; an object store's writer is not.
  np.savez(buffer, features=features, labels=labels)
  fs.write_bytes(output, buffer.getvalue())
  print(f'Wrote {output}: features {features.shape} float32, labels {labels.shape}')


if __name__ == '__main__':
  cli.run(_define_flags, main)
