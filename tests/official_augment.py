"""Test reference: the official SimCLR augmentations (`data_util.py`) as stateless TensorFlow ops.

Not used by the package (every augmentation runs on the device: simclr_jax/data/
device_augment.py). Kept here as the independent reference the JAX ops are compared with: the
same ops and constants as the official TF2 code, with explicit [2] seeds.
"""

import tensorflow as tf

# Official `data_util.py` constants.
CROP_PROPORTION = 0.875
MIN_OBJECT_COVERED = 0.1
ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
AREA_RANGE = (0.08, 1.0)
MAX_ATTEMPTS = 100
COLOR_JITTER_PROBABILITY = 0.8
GRAYSCALE_PROBABILITY = 0.2
BLUR_SIGMA_RANGE = (0.1, 2.0)


def _split(seed: tf.Tensor, num: int) -> tf.Tensor:
  """[num, 2] independent child seeds of `seed`."""
  return tf.random.experimental.stateless_split(seed, num=num)


def _bernoulli(seed: tf.Tensor, p: float) -> tf.Tensor:
  # Official `random_apply`: apply iff uniform[0, 1) < p.
  return tf.random.stateless_uniform([], seed, 0.0, 1.0) < p


def _resize_bicubic(image: tf.Tensor, image_size: int) -> tf.Tensor:
  # Official TF2: tf.image.resize(BICUBIC) = Keys a=-0.5, half-pixel centres, no antialias.
  return tf.image.resize(image, [image_size, image_size], method='bicubic', antialias=False)


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


def decode_crop(encoded: tf.Tensor, box_fn) -> tuple[tf.Tensor, tf.Tensor]:
  """(uint8 [h, w, 3] window box_fn(image_shape) = [y, x, h, w], int32 image_shape [3]).

  JPEG: the box comes from the header (`extract_jpeg_shape`) and only the window is decoded
  (`decode_and_crop_jpeg`, as the official ImageNet pipelines do). Other formats (PNG, GIF, BMP,
  WebP) are decoded whole and sliced. channels=3 turns grayscale and CMYK JPEGs into RGB, as
  `tf.io.decode_image(channels=3)` does on the decoded path. Baseline 4:4:4, grayscale, CMYK
  and progressive 4:4:4 JPEGs give bit-identical windows to decode-then-slice; with 4:2:0 or
  4:2:2 chroma, libjpeg-turbo upsamples chroma at the window's left and right edge columns from
  inside the window only, so those two columns can differ by a few levels (crop_decode_test).
  The shape's channel entry is that of the file (1, 3 or 4), not 3.
  """

  def jpeg() -> tuple[tf.Tensor, tf.Tensor]:
    shape = tf.image.extract_jpeg_shape(encoded)
    return tf.image.decode_and_crop_jpeg(encoded, box_fn(shape), channels=3), shape

  def other() -> tuple[tf.Tensor, tf.Tensor]:
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    shape = tf.shape(image)
    box = box_fn(shape)
    return image[box[0]:box[0] + box[2], box[1]:box[1] + box[3]], shape

  window, shape = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
  window.set_shape([None, None, 3])
  return window, shape


def _union_box(boxes: tf.Tensor) -> tf.Tensor:
  """The smallest box [y, x, h, w] holding every box of boxes [N, 4]."""
  top_left = tf.reduce_min(boxes[:, :2], axis=0)
  bottom_right = tf.reduce_max(boxes[:, :2] + boxes[:, 2:], axis=0)
  return tf.concat([top_left, bottom_right - top_left], axis=0)


def slice_crop(image: tf.Tensor, box_fn) -> tuple[tf.Tensor, tf.Tensor]:
  """`decode_crop` for a decoded uint8 image: (image[box_fn(shape)], shape), no copy to float."""
  shape = tf.shape(image)
  box = box_fn(shape)
  return image[box[0]:box[0] + box[2], box[1]:box[1] + box[3]], shape


def encoded_train_views(
  encoded: tf.Tensor,
  seeds: tf.Tensor,
  image_size: int,
  color_jitter_strength: float,
  flip: bool = True,
) -> list[tf.Tensor]:
  """`preprocess_for_train` views of an encoded image (tf.string), one per seed of seeds [V, 2].

  Each crop box is drawn from the encoded shape with the same seed as on the decoded path, so
  view i equals `preprocess_for_train(decode(encoded) / 255, seeds[i], ...)` up to the JPEG edge
  columns noted in `decode_crop`. The image is decoded once, over the smallest window that holds
  every view's crop (two random crops rarely cover the whole image), and each view slices it.
  """
  return train_views(lambda box_fn: decode_crop(encoded, box_fn), seeds, image_size,
                     color_jitter_strength, flip)


def decoded_train_views(
  image: tf.Tensor, seeds: tf.Tensor, image_size: int, color_jitter_strength: float,
  flip: bool = True,
) -> list[tf.Tensor]:
  """`preprocess_for_train(image / 255, seeds[i], ...)` for each seed, exactly, of a uint8 image,
  converting only the window the crops need to float (a 12 MP photo is 144 MB as float32)."""
  return train_views(lambda box_fn: slice_crop(image, box_fn), seeds, image_size,
                     color_jitter_strength, flip)


def train_views(
  read_window, seeds: tf.Tensor, image_size: int, color_jitter_strength: float, flip: bool = True
) -> list[tf.Tensor]:
  """The views of one image given `read_window(box_fn) -> (uint8 window, image shape)`."""
  view_seeds = [_split(seeds[i], 3) for i in range(seeds.shape[0])]  # crop, flip, colour each.

  def boxes(shape: tf.Tensor) -> tf.Tensor:
    return tf.stack([distorted_crop_box(shape, s[0]) for s in view_seeds])  # [V, 4]

  window, shape = read_window(lambda shape: _union_box(boxes(shape)))
  window = tf.image.convert_image_dtype(window, tf.float32)
  view_boxes = boxes(shape)
  origin = _union_box(view_boxes)[:2]
  views = []
  for i, seed in enumerate(view_seeds):
    y, x = tf.unstack(view_boxes[i, :2] - origin)
    crop = window[y:y + view_boxes[i, 2], x:x + view_boxes[i, 3]]
    image = _resize_bicubic(crop, image_size)
    views.append(_flip_colour_clip(image, seed, image_size, color_jitter_strength, flip))
  return views


def center_crop_box(image_shape: tf.Tensor, crop_proportion: float = CROP_PROPORTION) -> tf.Tensor:
  """Official `center_crop` box [offset_y, offset_x, side, side] (int32) for a square target.

  Side = rint(crop_proportion * min(H, W)) (official `_compute_crop_shape` with aspect 1), offsets
  ((H - side) + 1) // 2 and ((W - side) + 1) // 2.
  """
  height, width = tf.unstack(tf.cast(image_shape[:2], tf.int32))
  shorter = tf.cast(tf.minimum(height, width), tf.float32)
  side = tf.cast(tf.math.rint(crop_proportion * shorter), tf.int32)
  return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def preprocess_for_eval(
  image: tf.Tensor, image_size: int, crop_proportion: float = CROP_PROPORTION
) -> tf.Tensor:
  """The eval view [image_size, image_size, 3] float32 in [0, 1] of a float [H, W, 3] image.

  Official `preprocess_for_eval`: centre crop + bicubic resize; for image_size <= 32 (CIFAR)
  the official code does not crop (`data.py`: test_crop = image_size > 32). We still resize so
  that a larger folder image fits; at equal size the half-pixel bicubic resize is the identity.
  """
  image = tf.convert_to_tensor(image, tf.float32)
  if image_size > 32:
    box = center_crop_box(tf.shape(image), crop_proportion)
    image = tf.image.crop_to_bounding_box(image, box[0], box[1], box[2], box[3])
  image = tf.reshape(_resize_bicubic(image, image_size), [image_size, image_size, 3])
  return tf.clip_by_value(image, 0.0, 1.0)


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
