"""Plots of a run: augmented views, t-SNE of encoder features, training curves, top-1 per stage.

    python -m simclr_jax.visualize --config=configs/demo.py --workdir=workdirs/demo

WORKDIR is a run workdir (one subfolder per stage, as `simclr_jax.main` writes) or a single
stage workdir (checkpoints/, metrics.jsonl, results.json). Every stage gets `<stage>/plots/`:

    augmentations.png  NUM_IMAGES train images and two views of each, as the stage's pipeline
                       makes them (pretrain: crop, flip, colour, blur; others: crop and flip)
    tsne.png           t-SNE of encoder features of up to MAX_POINTS eval images, by class
    curves.png         metrics.jsonl: losses, contrastive / classifier accuracy, kNN, learning rate

and a run workdir with several stages gets `plots/stage_top1.png`: eval top-1 of each stage
from its results.json, the `supervised` baseline grey. A plot whose input is missing (no
checkpoint, no metrics) is skipped with a log line. The model architecture is the one saved
with the checkpoint; the config supplies the data and the seed.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from simclr_jax import cli, evaluation, fs, plots, sharding, stages
from simclr_jax import workdir as workdir_lib
from simclr_jax.data import input as data_input
from simclr_jax.data import views as views_lib
from simclr_jax.models import load

PLOTS_SUBDIR = 'plots'
ALL_PLOTS = ('augmentations', 'tsne', 'curves', 'stages')
NUM_IMAGES = 8
MAX_POINTS = 2000
# Splits up to this size are subsampled with a stride (class-sorted folders then show every
# class); larger ones (tfds, stored shuffled) use their first examples, to avoid a full scan.
STRIDE_SCAN_LIMIT = 20_000
FEATURE_BATCH = 256


# ------------------------------------------------------------------------------- data and model


def _load_split(config: ml_collections.ConfigDict, split: str):
  """The whole split (one process draws the plots), big JPEGs decoded at reduced scale as for
  training: a plot of 16 phone photos must not decode 16 x 36 MB."""
  data = config.data
  # Deferred, as below: TensorFlow is needed only to draw; runs without it import this module.
  from simclr_jax.data import sources

  return sources.load(data.dataset, split, folder=data.folder, data_dir=data.tfds_data_dir,
                      min_decoded_side=data_input.MIN_SIDE_FACTOR * data.image_size)


def _spread(source, count: int):
  """Up to `count` examples of a source, spread over the split when it is small enough."""
  stride = 1
  if source.num_examples <= STRIDE_SCAN_LIMIT:
    stride = max(1, source.num_examples // count)
  return source.restrict(np.arange(0, source.split_size, stride)[:count])


def augmentation_views(
  config: ml_collections.ConfigDict, stage: str = stages.STAGES[0], num_images: int = NUM_IMAGES
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, list[str], str]:
  """(originals, views_1, views_2, class names, description) of train images, fixed keys.

  What training sees: each image placed on the host's canvas (data/pipeline.py) and two views
  built by the device half (data/views.py) with the keys of epoch 0: pretraining's SimCLR views
  (the per-replica blur as for one device at step 0), or two crop + flip views for the others.
  """
  data = config.data
  source = _load_split(config, data.train_split)
  simclr = stages.get(stage).views == 'simclr'  # Else two crop + flip views.
  jitter = data.color_jitter_strength if simclr else 0.0
  blur = data.blur_mode if simclr and data.use_blur else ''
  from simclr_jax.data.pipeline import to_canvas  # Deferred: TensorFlow (see _load_split).

  canvas_size = data_input.canvas_size(config)
  originals, canvases, sizes, indices, titles = [], [], [], [], []
  for example in _spread(source, num_images).dataset:
    canvas, size = to_canvas(example['image'], canvas_size)
    canvases.append(canvas.numpy())
    sizes.append(size.numpy())
    indices.append(int(example['index']))
    originals.append(example['image'].numpy())
    label = int(example['label'])
    titles.append(source.class_names[label] if 0 <= label < len(source.class_names) else '')
  if not originals:
    raise ValueError(f'data.train_split={data.train_split!r} has no images; check data.dataset')
  keys = views_lib.example_keys(config.seed, jnp.zeros(len(indices), jnp.int32),
                                jnp.asarray(indices, jnp.int32))
  blur_key = jax.random.fold_in(jax.random.key(config.seed), views_lib.BLUR_PURPOSE)
  blur_key = jax.random.fold_in(jax.random.fold_in(blur_key, 0), 0)
  first, second = views_lib.train_views(
    keys, jnp.asarray(np.stack(canvases)), jnp.asarray(np.stack(sizes)),
    image_size=data.image_size, num_views=2, color_jitter_strength=jitter, blur=blur,
    blur_key=blur_key)
  what = (f'crop, flip, colour (s={jitter:g})' + (', blur' if blur else '')) if simclr \
    else 'crop, flip'
  description = f'{stage} views of {data.dataset}/{data.train_split}: {what}'
  return originals, np.asarray(first), np.asarray(second), titles, description


def encoder_features(
  config: ml_collections.ConfigDict,
  stage_workdir: str,
  max_points: int = MAX_POINTS,
  variables: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """(features [N, D] float32, labels [N], class names) of up to `max_points` eval images.

  Encoder output in inference mode on the eval views (`evaluation.extract_features` on a mesh of
  one local device: only this process draws). Variables
  are `variables` ({'params', 'batch_stats'}) if given, else the newest checkpoint's.
  """
  if variables is None:  # The saved architecture (a distilled student may differ).
    loaded = load.load(stage_workdir, config, bn_axis_name=None)
    model, variables = loaded.model, loaded.variables
  else:
    model = load.build(config, load.num_classes_of(variables['params']), bn_axis_name=None)
  source = _spread(_load_split(config, config.data.eval_split), max_points)
  if source.num_examples == 0:
    raise ValueError(f'data.eval_split={config.data.eval_split!r} has no images; check '
                     'data.dataset')
  mesh = sharding.make_mesh(jax.local_devices()[:1])  # This process alone draws the plots.
  batch_size = min(FEATURE_BATCH, max_points)
  data = data_input.eval_data(config, source, batch_size)
  step = evaluation.make_feature_step(model, mesh, views_lib.make_eval_view(config))
  params, batch_stats = sharding.replicate(
    mesh, (variables['params'], variables.get('batch_stats', {})))
  features, labels = evaluation.extract_features(step, params, batch_stats, data, mesh)
  return features, labels, source.class_names


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
  """t-SNE [N, 2] of L2-normalised features (cosine geometry, as the kNN monitor and NT-Xent)."""
  from sklearn.manifold import TSNE  # Deferred: heavy, and only the t-SNE needs it.

  features = np.asarray(features, np.float64)
  features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
  perplexity = min(30.0, (len(features) - 1) / 3.0)  # sklearn needs perplexity < N.
  tsne = TSNE(n_components=2, perplexity=perplexity, init='pca', random_state=seed)
  return tsne.fit_transform(features).astype(np.float32)


# ----------------------------------------------------------------------------------- rendering


def plots_dir(workdir: str) -> str:
  return fs.join(workdir, PLOTS_SUBDIR)


def render_stage_plots(
  config: ml_collections.ConfigDict,
  stage_workdir: str,
  *,
  which: tuple[str, ...] = ALL_PLOTS,
  num_images: int = NUM_IMAGES,
  max_points: int = MAX_POINTS,
  variables: dict[str, Any] | None = None,
) -> list[str]:
  """Writes the stage's plots into `<stage_workdir>/plots/`; returns the paths written.

  For the end of a stage in the training loop: pass `variables` (host arrays of the final
  state) to skip reading the checkpoint back. Only process 0 writes; in a multi-process job
  without `variables` the t-SNE is skipped (restoring from one process only would stall).
  """
  if jax.process_index() != 0:
    return []
  stage = workdir_lib.stage_name(stage_workdir)
  out = plots_dir(stage_workdir)
  written = []
  if 'augmentations' in which:
    originals, views_1, views_2, titles, description = augmentation_views(config, stage,
                                                                          num_images)
    written.append(plots.augmentation_grid(
      originals, views_1, views_2, fs.join(out, 'augmentations.png'), titles=titles,
      suptitle=description))
  if 'tsne' in which:
    has_checkpoint = variables is not None or fs.exists(fs.join(stage_workdir, 'checkpoints'))
    if not has_checkpoint:
      logging.info('%s: no checkpoints/; t-SNE skipped.', stage_workdir)
    elif variables is None and jax.process_count() > 1:
      logging.warning('%s: t-SNE skipped (multi-process job; pass variables=).', stage_workdir)
    else:
      features, labels, class_names = encoder_features(config, stage_workdir, max_points,
                                                       variables)
      if len(features) < 5:
        logging.info('%s: only %d eval images; t-SNE skipped.', stage_workdir, len(features))
      else:
        points = tsne_embedding(features, seed=config.seed)
        written.append(plots.tsne_scatter(
          points, labels, fs.join(out, 'tsne.png'), class_names=class_names,
          title=f'{stage}: t-SNE of encoder features, {len(points)} {config.data.eval_split} '
                'images'))
  if 'curves' in which:
    path = plots.training_curves(workdir_lib.read_metrics(stage_workdir),
                                 fs.join(out, 'curves.png'), title=f'{stage}: {stage_workdir}')
    if path is None:
      logging.info('%s: no metrics in %s; curves skipped.', stage_workdir, workdir_lib.METRICS_FILE)
    else:
      written.append(path)
  for path in written:
    logging.debug('Wrote %s', path)  # The caller says it in one line.
  return written


def top1_by_stage(stage_workdirs: dict[str, str]) -> dict[str, float]:
  """{stage: eval_top1} of the stages whose results.json has one."""
  found = {}
  for stage, directory in stage_workdirs.items():
    results = workdir_lib.read_results(directory) or {}
    if isinstance(results.get('eval_top1'), (int, float)):
      found[stage] = float(results['eval_top1'])
  return found


def render_run_plots(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  which: tuple[str, ...] = ALL_PLOTS,
  num_images: int = NUM_IMAGES,
  max_points: int = MAX_POINTS,
) -> list[str]:
  """Every plot that applies to a run workdir (or a single stage workdir); returns the paths."""
  stage_workdirs = workdir_lib.find_stage_workdirs(workdir)
  if not stage_workdirs:
    raise FileNotFoundError(
      f'--workdir={workdir} holds no stage (no checkpoints/, {workdir_lib.METRICS_FILE} or '
      f'{workdir_lib.RESULTS_FILE} in it or its subfolders); pass the --workdir given to '
      'simclr_jax.main'
    )
  written = []
  for directory in stage_workdirs.values():
    written += render_stage_plots(config, directory, which=which, num_images=num_images,
                                  max_points=max_points)
  accuracies = top1_by_stage(stage_workdirs)
  if 'stages' in which and len(stage_workdirs) > 1 and accuracies:
    known = [stages.get(name) for name in accuracies if name in stages.REGISTRY]
    note = '; '.join(f'{stage.name}: {stage.top1_note}' for stage in known if stage.top1_note)
    baseline = next((stage.name for stage in known if stage.baseline), '')
    written.append(plots.stage_bars(accuracies, fs.join(plots_dir(workdir), 'stage_top1.png'),
                                    title=f'eval top-1 per stage: {workdir}', note=note,
                                    baseline=baseline))
  return written


# ------------------------------------------------------------------------------------------ CLI


def _define_flags():
  config = config_flags.DEFINE_config_file('config', None, 'Config file (data and seed).')
  workdir = flags.DEFINE_string('workdir', None, 'Run workdir or stage workdir.')
  which = flags.DEFINE_list('plots', list(ALL_PLOTS), f'Plots to render, of {ALL_PLOTS}.')
  num_images = flags.DEFINE_integer('num_images', NUM_IMAGES, 'Images in augmentations.png.')
  max_points = flags.DEFINE_integer('max_points', MAX_POINTS, 'Eval images in the t-SNE.')
  flags.mark_flags_as_required(['config', 'workdir'])
  return config, workdir, which, num_images, max_points


def main(argv: list[str], flag_values) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  config, workdir, which, num_images, max_points = (f.value for f in flag_values)
  unknown = sorted(set(which) - set(ALL_PLOTS))
  if unknown:
    raise app.UsageError(f'--plots has unknown {", ".join(unknown)}; use some of {ALL_PLOTS}')
  try:
    written = render_run_plots(config, workdir, which=tuple(which), num_images=num_images,
                               max_points=max_points)
  except (FileNotFoundError, ValueError) as error:
    raise app.UsageError(str(error)) from None
  print('\n'.join(f'Wrote {path}' for path in written) or f'No plots apply to {workdir}.')


if __name__ == '__main__':
  cli.run(_define_flags, main)
