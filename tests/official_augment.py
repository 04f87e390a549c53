"""Test reference: the official SimCLR augmentations (`data_util.py`) as stateless TensorFlow ops.

Not used by the package (every augmentation runs on the device: simclr_jax/data/
device_augment.py). Kept here as the independent reference the JAX ops are compared with: the
same ops and constants as the official TF2 code, with explicit [2] seeds.
"""

import tensorflow as tf


# Official `data_util.py` constants.
MIN_OBJECT_COVERED = 0.1
ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
AREA_RANGE = (0.08, 1.0)
MAX_ATTEMPTS = 100
COLOR_JITTER_PROBABILITY = 0.8
GRAYSCALE_PROBABILITY = 0.2
BLUR_SIGMA_RANGE = (0.1, 2.0)


def _resize_bicubic(image: tf.Tensor, image_size: int) -> tf.Tensor:
  # Official TF2: tf.image.resize(BICUBIC) = Keys a=-0.5, half-pixel centres, no antialias.
  return tf.image.resize(image, [image_size, image_size], method='bicubic', antialias=False)


def center_crop(image: tf.Tensor, crop_proportion: float) -> tf.Tensor:
  """Official `center_crop` to a square: side rint(p * shorter side), offsets
  ((H - side) + 1) // 2."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  side = tf.cast(tf.math.rint(crop_proportion * tf.cast(tf.minimum(height, width), tf.float32)),
                 tf.int32)
  return tf.image.crop_to_bounding_box(
    image, (height - side + 1) // 2, (width - side + 1) // 2, side, side)


def preprocess_for_eval(image: tf.Tensor, image_size: int, crop_proportion: float = 0.875):
  """Official `preprocess_for_eval` on a float [H, W, 3] image in [0, 1]: centre crop (not at
  <= 32 px, official `data.py` test_crop), bicubic resize, clip."""
  image = tf.convert_to_tensor(image, tf.float32)
  if image_size > 32:
    image = center_crop(image, crop_proportion)
  return tf.clip_by_value(_resize_bicubic(image, image_size), 0.0, 1.0)


def _split(seed: tf.Tensor, num: int) -> tf.Tensor:
  """[num, 2] independent child seeds of `seed`."""
  return tf.random.experimental.stateless_split(seed, num=num)


def _bernoulli(seed: tf.Tensor, p: float) -> tf.Tensor:
  # Official `random_apply`: apply iff uniform[0, 1) < p.
  return tf.random.stateless_uniform([], seed, 0.0, 1.0) < p


def distorted_crop_box(image_shape: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """The random-resized-crop box [offset_y, offset_x, height, width] (int32) for an image shape.

  Official `distorted_bounding_box_crop` with bbox = whole image, min_object_covered 0.1, aspect
  (3/4, 4/3) (target is square), area (0.08, 1), 100 attempts; after 100 failures the TF kernel
  returns the whole image. The 10% coverage test makes the effective minimum area 0.10.
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
    image_size=tf.cast(image_shape, tf.int32),
    bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
    seed=seed,
    min_object_covered=MIN_OBJECT_COVERED,
    aspect_ratio_range=ASPECT_RATIO_RANGE,
    area_range=AREA_RANGE,
    max_attempts=MAX_ATTEMPTS,
    use_image_if_no_bounding_boxes=True,
  )
  return tf.stack([begin[0], begin[1], size[0], size[1]])


def random_crop_with_resize(image: tf.Tensor, seed: tf.Tensor, image_size: int) -> tf.Tensor:
  """Official `crop_and_resize`: random distorted crop, then bicubic resize to a square."""
  box = distorted_crop_box(tf.shape(image), seed)
  image = tf.image.crop_to_bounding_box(image, box[0], box[1], box[2], box[3])
  return _resize_bicubic(image, image_size)


def random_brightness(image: tf.Tensor, max_delta: float, seed: tf.Tensor) -> tf.Tensor:
  """Official impl 'simclrv2': multiply by a factor ~ U[max(0, 1 - max_delta), 1 + max_delta]."""
  factor = tf.random.stateless_uniform([], seed, max(0.0, 1.0 - max_delta), 1.0 + max_delta)
  return image * factor


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
  """Official `to_grayscale(keep_channels=True)`: luma (0.2989, 0.5870, 0.1140) tiled to 3."""
  return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def color_jitter(image: tf.Tensor, strength: float, seed: tf.Tensor) -> tf.Tensor:
  """Official `color_jitter(random_order=True)`: the four ops in a random order, clip after each.

  Brightness, contrast and saturation use 0.8 * strength, hue 0.2 * strength.
  """
  seeds = _split(seed, 5)
  amount = 0.8 * strength
  hue = 0.2 * strength
  transforms = [
    lambda x: random_brightness(x, amount, seeds[1]),
    lambda x: tf.image.stateless_random_contrast(x, 1.0 - amount, 1.0 + amount, seeds[2]),
    lambda x: tf.image.stateless_random_saturation(x, 1.0 - amount, 1.0 + amount, seeds[3]),
    lambda x: tf.image.stateless_random_hue(x, hue, seeds[4]),
  ]
  # A uniformly random permutation of the 4 ops (official: tf.random.shuffle(tf.range(4))).
  order = tf.argsort(tf.random.stateless_uniform([4], seeds[0]))
  for position in range(4):
    image = tf.switch_case(order[position], [lambda f=f: f(image) for f in transforms])
    image = tf.clip_by_value(image, 0.0, 1.0)
  return image


def random_color_jitter(image: tf.Tensor, strength: float, seed: tf.Tensor) -> tf.Tensor:
  """Official `random_color_jitter(p=1)`: jitter with p=0.8, then independently gray with p=0.2."""
  seeds = _split(seed, 3)
  image = tf.cond(
    _bernoulli(seeds[0], COLOR_JITTER_PROBABILITY),
    lambda: color_jitter(image, strength, seeds[1]),
    lambda: image,
  )
  return tf.cond(
    _bernoulli(seeds[2], GRAYSCALE_PROBABILITY), lambda: to_grayscale(image), lambda: image
  )


def _flip_colour_clip(
  image: tf.Tensor, seeds: tf.Tensor, image_size: int, color_jitter_strength: float, flip: bool
) -> tf.Tensor:
  """The steps after the crop: flip -> colour -> clip (seeds [3, 2] from `preprocess_for_train`)."""
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, seeds[1])
  if color_jitter_strength > 0:
    image = random_color_jitter(image, color_jitter_strength, seeds[2])
  image = tf.reshape(image, [image_size, image_size, 3])
  return tf.clip_by_value(image, 0.0, 1.0)


def preprocess_for_train(
  image: tf.Tensor,
  seed: tf.Tensor,
  image_size: int,
  color_jitter_strength: float,
  crop: bool = True,
  flip: bool = True,
) -> tf.Tensor:
  """One training view [image_size, image_size, 3] float32 in [0, 1] of a float [H, W, 3] image.

  Official `preprocess_for_train`. With crop=False the image must already be image_size square.
  Blur is not here: it is a batch-level op (`batch_random_blur`), as in the official code.
  """
  seeds = _split(seed, 3)  # crop, flip, colour.
  image = tf.convert_to_tensor(image, tf.float32)
  if crop:
    image = random_crop_with_resize(image, seeds[0], image_size)
  return _flip_colour_clip(image, seeds, image_size, color_jitter_strength, flip)


def gaussian_kernel(kernel_size: int, sigma: tf.Tensor) -> tf.Tensor:
  """Normalised 1-D Gaussian taps [2 * (kernel_size // 2) + 1] (official `gaussian_blur`).

  `sigma` may be a scalar or a vector [G]; the result is then [G, taps].
  """
  radius = kernel_size // 2
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  sigma = tf.cast(sigma, tf.float32)[..., None]
  taps = tf.exp(-tf.square(x) / (2.0 * tf.square(sigma)))
  return taps / tf.reduce_sum(taps, axis=-1, keepdims=True)


def gaussian_blur(images: tf.Tensor, sigmas: tf.Tensor, kernel_size: int) -> tf.Tensor:
  """Separable Gaussian blur of images [G, N, H, W, C] with one sigma per group (sigmas [G]).

  Official: depthwise conv, horizontal then vertical, zero 'SAME' padding. The G groups are
  folded into the channel axis so a single depthwise conv applies each group's own kernel.
  """
  groups, per_group, height, width, channels = tf.unstack(tf.shape(images))
  taps = gaussian_kernel(kernel_size, sigmas)  # [G, K]
  num_taps = 2 * (kernel_size // 2) + 1
  # [N, H, W, G * C], channel index g * C + c.
  stacked = tf.reshape(tf.transpose(images, [1, 2, 3, 0, 4]), [per_group, height, width, -1])
  per_channel = tf.repeat(taps, channels, axis=0)  # [G * C, K]
  kernel_h = tf.reshape(tf.transpose(per_channel), [1, num_taps, groups * channels, 1])
  kernel_v = tf.reshape(tf.transpose(per_channel), [num_taps, 1, groups * channels, 1])
  blurred = tf.nn.depthwise_conv2d(stacked, kernel_h, [1, 1, 1, 1], 'SAME')
  blurred = tf.nn.depthwise_conv2d(blurred, kernel_v, [1, 1, 1, 1], 'SAME')
  blurred = tf.reshape(blurred, [per_group, height, width, groups, channels])
  return tf.transpose(blurred, [3, 0, 1, 2, 4])


def batch_random_blur(
  images: tf.Tensor, seed: tf.Tensor, num_groups: int, p: float = 0.5
) -> tf.Tensor:
  """Official `batch_random_blur` for one view's batch [B, H, W, 3], B divisible by num_groups.

  A group is one device's contiguous slice of the host batch: the official code runs this inside
  the model on each replica's batch, drawing one sigma ~ U[0.1, 2] per replica batch. Kernel size
  is image_size // 10 (height of the batch). Each example keeps its blurred version with
  probability p, else the original; the result is clipped to [0, 1].
  """
  images = tf.convert_to_tensor(images, tf.float32)
  batch_size, height, width = images.shape[0], images.shape[1], images.shape[2]
  if batch_size is None or height is None or width is None:
    raise ValueError('batch_random_blur needs static shapes; batch with drop_remainder=True.')
  if batch_size % num_groups:
    raise ValueError(f'batch size {batch_size} is not divisible by num_groups={num_groups}.')
  sigma_seed, select_seed = tf.unstack(_split(seed, 2))
  sigmas = tf.random.stateless_uniform([num_groups], sigma_seed, *BLUR_SIGMA_RANGE)
  grouped = tf.reshape(images, [num_groups, batch_size // num_groups, height, width, 3])
  blurred = tf.reshape(gaussian_blur(grouped, sigmas, height // 10), tf.shape(images))
  selector = tf.random.stateless_uniform([batch_size, 1, 1, 1], select_seed, 0.0, 1.0) < p
  return tf.clip_by_value(tf.where(selector, blurred, images), 0.0, 1.0)
