"""Checks a whole config before anything is built or compiled.

Each problem is one line that names the field, the bad value and the fix, raised as ConfigError.
"""

import re

import ml_collections

# One home each: the modules that act on them (a folder listing reads exactly these extensions).
from simclr_jax.data.folders import IMAGE_EXTENSIONS
from simclr_jax.errors import ConfigError  # Also validation.ConfigError, as before.
from simclr_jax.optim import OPTIMIZERS
from simclr_jax import fs, stages

SUPPORTED_DEPTHS = (18, 34, 50, 101, 152, 200)
LR_SCALINGS = ('linear', 'sqrt')
COMPUTE_DTYPES = ('float32', 'bfloat16')


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def _has_images(folder: str) -> bool:
  for _, _, files in fs.walk(folder):
    if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
      return True
  return False


def known_tfds_names() -> set[str]:
  import tensorflow_datasets as tfds  # Imported here: only tfds datasets need it.

  # The builders installed with tfds; community datasets would be listed from GCS (a network
  # call, and credential warnings on an offline machine).
  return set(tfds.list_builders(with_community_datasets=False))


def validate_data(data: ml_collections.ConfigDict, model: ml_collections.ConfigDict) -> None:
  dataset = data.dataset
  if dataset == 'folder':
    _require(
      bool(data.folder),
      "data.folder is empty but data.dataset='folder'; set --config.data.folder=/path/to/images",
    )
    _require(
      fs.isdir(data.folder),
      f'data.folder={data.folder!r} does not exist; point it at root/<split>/<class>/*.jpg '
      'or a flat folder of images',
    )
    _require(
      _has_images(data.folder),
      f'data.folder={data.folder!r} holds no image files ({", ".join(IMAGE_EXTENSIONS)}); '
      'point it at a folder of images',
    )
  elif dataset != 'demo':
    base_name = dataset.split('/')[0].split(':')[0]
    _require(
      base_name in known_tfds_names(),
      f'data.dataset={dataset!r} is not a known tfds dataset; use e.g. cifar10, cifar100, stl10, '
      "imagenet2012, imagenet2012_subset/1pct, 'demo', or 'folder' with data.folder=PATH",
    )
  cifar_stem = model.cifar_stem if model.cifar_stem is not None else data.image_size <= 32
  min_size = 8 if cifar_stem else 32  # 3 or 5 halvings down to at least one pixel.
  _require(
    data.image_size >= min_size,
    f'data.image_size={data.image_size} is smaller than the {min_size}-pixel minimum of this '
    'ResNet stem; raise data.image_size (or set model.cifar_stem=True for small images)',
  )
  _require(
    data.color_jitter_strength >= 0,
    f'data.color_jitter_strength={data.color_jitter_strength} is negative; use 0 (off) or more',
  )
  _require(
    0 < data.eval_crop_proportion <= 1,
    f'data.eval_crop_proportion={data.eval_crop_proportion} is outside (0, 1]; use 0.875',
  )
  _require(
    data.blur_mode in ('batch', 'image'),
    f"data.blur_mode={data.blur_mode!r} is unknown; use 'batch' (official) or 'image'",
  )
  _require(
    data.canvas_size == 0 or data.canvas_size >= data.image_size,
    f'data.canvas_size={data.canvas_size} is smaller than data.image_size='
    f'{data.image_size}; use 0 (= image_size) or a larger size (e.g. 512 for ImageNet)',
  )
  _require(
    data.shuffle_buffer_multiplier >= 1,
    f'data.shuffle_buffer_multiplier={data.shuffle_buffer_multiplier} must be >= 1',
  )


def validate_model(model: ml_collections.ConfigDict) -> None:
  _require(
    model.depth in SUPPORTED_DEPTHS,
    f'model.depth={model.depth} is not supported; use one of {SUPPORTED_DEPTHS} '
    '(with model.blocks_per_stage set, the depth only picks basic (18, 34) or bottleneck blocks)',
  )
  if model.blocks_per_stage is not None:
    blocks = tuple(model.blocks_per_stage)
    _require(
      len(blocks) == 4 and all(isinstance(b, int) and b >= 1 for b in blocks),
      f'model.blocks_per_stage={blocks} must be 4 positive integers, e.g. (3, 4, 6, 3)',
    )
  _require(
    0 < model.width_multiplier <= 16,
    f'model.width_multiplier={model.width_multiplier} is outside (0, 16]; SimCLRv2 uses 1, 2 or 3',
  )
  _require(
    0 <= model.sk_ratio < 1,
    f'model.sk_ratio={model.sk_ratio} is outside [0, 1); use 0 (no SK) or 0.0625 (SimCLRv2)',
  )
  _require(
    model.compute_dtype in COMPUTE_DTYPES,
    f'model.compute_dtype={model.compute_dtype!r} is unknown; use one of {COMPUTE_DTYPES}',
  )
  _require(
    model.num_proj_layers >= 0,
    f'model.num_proj_layers={model.num_proj_layers} is negative; use 0..3 (SimCLRv2: 3)',
  )
  _require(
    model.proj_out_dim >= 1, f'model.proj_out_dim={model.proj_out_dim} must be >= 1 (default 128)'
  )
  num_hiddens = model.num_proj_layers + 1
  _require(
    -num_hiddens <= model.ft_proj_selector < num_hiddens,
    f'model.ft_proj_selector={model.ft_proj_selector} does not index the {num_hiddens} head '
    f'outputs; use 0 (encoder) .. {model.num_proj_layers} or -1 (last)',
  )
  _require(
    0 <= model.bn_momentum < 1, f'model.bn_momentum={model.bn_momentum} is outside [0, 1); use 0.9'
  )


def validate_optim(optim: ml_collections.ConfigDict) -> None:
  _require(
    optim.optimizer in OPTIMIZERS,
    f'optim.optimizer={optim.optimizer!r} is unknown; use one of {OPTIMIZERS}',
  )
  _require(
    optim.learning_rate >= 0,
    f'optim.learning_rate={optim.learning_rate} is negative; use a positive base LR (e.g. 0.3)',
  )
  _require(
    optim.learning_rate_scaling in LR_SCALINGS,
    f'optim.learning_rate_scaling={optim.learning_rate_scaling!r} is unknown; use {LR_SCALINGS}',
  )
  _require(
    optim.weight_decay >= 0, f'optim.weight_decay={optim.weight_decay} is negative; use >= 0'
  )
  _require(
    0 <= optim.momentum < 1, f'optim.momentum={optim.momentum} is outside [0, 1); use 0.9'
  )
  _require(
    optim.warmup_epochs >= 0, f'optim.warmup_epochs={optim.warmup_epochs} is negative; use >= 0'
  )
  _require(
    optim.trust_coefficient > 0,
    f'optim.trust_coefficient={optim.trust_coefficient} must be > 0 (official 1e-3)',
  )


def parse_profile_steps(text: str) -> tuple[int, int] | None:
  """'START,COUNT' -> (START, COUNT), both >= 1; '' -> None; ValueError on anything else."""
  if not text.strip():
    return None
  start, count = (int(part) for part in text.split(','))
  if start < 1 or count < 1:
    raise ValueError(text)
  return start, count


def validate_train(train: ml_collections.ConfigDict, num_devices: int, num_processes: int) -> None:
  batch = train.global_batch_size
  _require(batch >= 1, f'train.global_batch_size={batch} must be >= 1')
  _require(
    batch % num_devices == 0,
    f'train.global_batch_size={batch} is not divisible by the {num_devices} devices; '
    f'use a multiple of {num_devices}',
  )
  _require(
    batch % num_processes == 0,
    f'train.global_batch_size={batch} is not divisible by the {num_processes} processes',
  )
  _require(
    train.eval_batch_size >= num_devices and train.eval_batch_size % num_devices == 0,
    f'train.eval_batch_size={train.eval_batch_size} is not a positive multiple of the '
    f'{num_devices} devices; use e.g. {max(1, train.eval_batch_size // num_devices) * num_devices}',
  )
  _require(
    train.temperature > 0,
    f'train.temperature={train.temperature} must be > 0; use 0.1 (ImageNet) or 0.5 (CIFAR)',
  )
  _require(
    train.train_steps > 0 or train.train_epochs > 0,
    f'train.train_epochs={train.train_epochs} and train.train_steps={train.train_steps}: '
    'set one of them > 0',
  )
  _require(train.train_steps >= 0, f'train.train_steps={train.train_steps} is negative')
  for field in ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
    value = train[field]
    _require(value >= 1, f'train.{field}={value} must be >= 1')
  _require(train.eval_every_steps >= 0, f'train.eval_every_steps={train.eval_every_steps} < 0')
  try:
    parse_profile_steps(train.profile_steps)
  except ValueError:
    raise ConfigError(
      f'train.profile_steps={train.profile_steps!r} is not START,COUNT; use e.g. '
      '--config.train.profile_steps=20,5 (a trace of steps 20-24) or an empty string') from None



def _has_checkpoints(workdir: str) -> bool:
  directory = fs.join(workdir, 'checkpoints')
  return fs.isdir(directory) and any(name.isdigit() for name in fs.scan(directory)[0])


def stage_list(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """config.stages as a tuple of names; `--config.stages=pretrain,finetune` may arrive as one
  string (or a 1-tuple holding it), so commas are split here."""
  stages = config.stages
  items = [stages] if isinstance(stages, str) else list(stages)
  names = [n.strip(" '\"()") for item in items for n in str(item).split(',')]
  return tuple(n for n in names if n)


def check_labels(config: ml_collections.ConfigDict) -> None:
  """Stages that need labels, on a flat folder of unlabeled images: refused before any runs."""
  data = config.data
  if data.dataset != 'folder' or not data.folder or not fs.isdir(data.folder):
    return
  flat = not fs.scan(data.folder)[0]
  needs_labels = [name for name in stage_list(config)
                  if name in stages.REGISTRY and stages.get(name).uses_labels(config)]
  _require(not (flat and needs_labels),
           f'data.folder={data.folder!r} is a flat folder of unlabeled images, but '
           f'{", ".join(needs_labels)} needs labels; use --config.stages=pretrain, or put the '
           'images in <split>/<class>/ folders')


def _check_restore(restore: stages.Restore, name: str, config, names: tuple[str, ...]) -> None:
  """A stage's source of variables exists, or is a stage that runs before it."""
  value, run_stage = restore.value(config), restore.run_stage(config)
  ran_before = run_stage in names[: names.index(name)]
  if run_stage and not value:  # The default: this run's stage.
    _require(ran_before, f'config.stages runs {name!r} without {run_stage!r} before it; add '
             f'{run_stage!r} first or set {restore.field}=STAGE_WORKDIR')
  elif run_stage:
    _require(ran_before, f'{restore.field}={value!r} but config.stages has no {value!r} before '
             f"{name!r}; set it to a stage workdir or ''")
  elif value:
    _require(_has_checkpoints(value) or ran_before,
             f'{restore.field}={value!r} holds no checkpoints/; point it at a stage workdir '
             '(or an imported model, see docs/IMPORT_TF2.md)')


def validate_stages(config: ml_collections.ConfigDict) -> None:
  names = stage_list(config)
  _require(len(names) > 0, 'config.stages is empty; use e.g. ("pretrain",)')
  for name in names:
    _require(name in stages.REGISTRY,
             f'config.stages has unknown stage {name!r}; use any of {stages.STAGES}')
  _require(len(set(names)) == len(names), f'config.stages={names} repeats a stage')
  used = set()  # Config sections read by the stages that run.
  for name in names:
    stage = stages.get(name)
    used |= stage.sections()
    for restore in (stage.teacher, stage.init):  # The teacher first: without it nothing runs.
      if restore:
        _check_restore(restore, name, config, names)
  finetune, distill = config.finetune, config.distill
  if 'distill' in used:
    _require(distill.temperature > 0, f'distill.temperature={distill.temperature} must be > 0')
    _require(distill.label_weight >= 0, f'distill.label_weight={distill.label_weight} must be >= 0')
  if 'finetune' in used:
    _require(
      finetune.examples_per_class > 0 or 0 < finetune.label_fraction <= 1,
      f'finetune.label_fraction={finetune.label_fraction} is outside (0, 1]; use e.g. 0.01 or '
      '0.1 (or set finetune.examples_per_class)',
    )
    _require(
      -1 <= finetune.fine_tune_after_block <= 4,
      f'finetune.fine_tune_after_block={finetune.fine_tune_after_block} is outside -1..4 '
      '(-1: train all, 4: linear eval)',
    )
  _require(config.knn.k >= 1, f'knn.k={config.knn.k} must be >= 1 (default 200)')
  _require(config.knn.temperature > 0, f'knn.temperature={config.knn.temperature} must be > 0')


def validate_config(
  config: ml_collections.ConfigDict, num_devices: int = 1, num_processes: int = 1
) -> None:
  """Raises ConfigError (one line, naming the field) for the first problem found."""
  validate_model(config.model)
  validate_data(config.data, config.model)
  validate_optim(config.optim)
  validate_train(config.train, num_devices, num_processes)
  validate_stages(config)


def validate_stage(
  config: ml_collections.ConfigDict, name: str, num_devices: int = 1, num_processes: int = 1
) -> None:
  """`validate_config` of the config stage `name` trains with (`stages.Stage.derive`).

  A field the stage's own section sets is named there: `finetune.train.global_batch_size=50`,
  not the derived `train.global_batch_size=50` that the user never wrote.
  """
  stage = stages.get(name)
  try:
    validate_config(stage.derive(config), num_devices, num_processes)
  except ConfigError as error:
    message = str(error)
    for target, source in reversed(stage.overrides):  # The last override applied wins (derive).
      match = re.match(rf'{re.escape(target)}((?:\.\w+)*)=', message)
      if match and _is_set(config, source + match.group(1)):
        # Every mention of the derived field, not inside a longer dotted name.
        field = target + match.group(1)
        message = re.sub(rf'(?<![\w.]){re.escape(field)}\b', source + match.group(1), message)
        break
    raise ConfigError(f'{message} (stage {name})') from error


def _is_set(config: ml_collections.ConfigDict, path: str) -> bool:
  """Whether the dotted config path exists and holds a value (None: inherit)."""
  try:
    return stages.lookup(config, path) is not None
  except (KeyError, AttributeError):
    return False
