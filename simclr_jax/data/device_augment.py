"""The SimCLR augmentations: pure, jittable JAX functions (official `data_util.py`).

The one implementation of every random augmentation op. They run on the accelerator inside the
jitted step (data/views.py), on uint8 images the host only decoded onto a fixed canvas
(pipeline.py) or that sit on the device already (resident.py). Every op takes an explicit key for
ONE example and is vmapped over a batch of keys, so a view is a pure function of (key, image)
and does not depend on the batch it lands in. Random choices never branch in Python: each op is
computed and kept or discarded with `jnp.where`.

    train_view:       random resized crop -> flip -> colour (jitter p=0.8, gray p=0.2) -> clip
                      [-> per-image Gaussian blur p=0.5 -> clip]; crop + flip only at strength 0
    batch_random_blur: the official blur, one sigma per replica batch
    eval_view:        the deterministic eval view: centre crop (none at <= 32 px) -> resize

Notes against the official TF code:
  * Blur: official draws ONE sigma per replica batch (`batch_random_blur`, data.blur_mode
    'batch', called per device inside `shard_map`); 'image' draws one per image instead.
  * Crop: `tf.image.sample_distorted_bounding_box`'s algorithm (kernel `GenerateRandomCrop`),
    with JAX random bits: the same distribution, not the same draws.
  * Resize: exact TF2 `resize(bicubic, antialias=False)` of the crop (Keys a=-0.5, half-pixel
    centres, out-of-crop taps dropped and the rest renormalised, as the TF kernel does), written
    as two small matmuls per image. `jax.image.scale_and_translate` would read pixels outside the
    crop box at its edges; the matmul form is exact and maps to the MXU/tensor cores.
"""

import jax
import jax.numpy as jnp

# Official `data_util.py` constants.
CROP_PROPORTION = 0.875  # Eval centre crop.
MIN_OBJECT_COVERED = 0.1
ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
AREA_RANGE = (0.08, 1.0)
MAX_ATTEMPTS = 100
FLIP_PROBABILITY = 0.5
COLOR_JITTER_PROBABILITY = 0.8
GRAYSCALE_PROBABILITY = 0.2
BLUR_PROBABILITY = 0.5
BLUR_SIGMA_RANGE = (0.1, 2.0)
GRAYSCALE_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale.


def to_float(images_uint8: jax.Array) -> jax.Array:
  """uint8 -> float32 in [0, 1], exactly as the official `tf.image.convert_image_dtype`: times
  float32(1 / 255), which differs from / 255 in the last bit for about half the values."""
  return images_uint8.astype(jnp.float32) * jnp.float32(1.0 / 255.0)


# ----------------------------------------------------------------------------- random crop


def _lrint(x: jax.Array) -> jax.Array:
  """C `lrintf`: round half to even, as the TF kernel rounds (jnp.round is also half-even)."""
  return jnp.round(x).astype(jnp.int32)


def crop_box(key: jax.Array, height: int | jax.Array, width: int | jax.Array) -> jax.Array:
  """One random-resized-crop box [offset_y, offset_x, crop_height, crop_width] (int32) of an
  image of (height, width): Python ints or traced int32 scalars (an image on a padded canvas).

  `tf.image.sample_distorted_bounding_box` (kernel `GenerateRandomCrop`) with bbox = whole
  image, aspect ~ U(3/4, 4/3), area (0.08, 1), min_object_covered 0.1, 100 attempts. The
  attempts are drawn at once and the first accepted one is taken; after 100 failures the whole
  image is used (TF kernel), not a centre crop.
  """
  k_aspect, k_height, k_y, k_x = jax.random.split(key, 4)
  shape = (MAX_ATTEMPTS,)
  aspect = jax.random.uniform(k_aspect, shape, jnp.float32, *ASPECT_RATIO_RANGE)
  height, width = jnp.asarray(height, jnp.int32), jnp.asarray(width, jnp.int32)
  image_area = (height * width).astype(jnp.float32)
  min_area, max_area = AREA_RANGE[0] * image_area, AREA_RANGE[1] * image_area
  min_height = _lrint(jnp.sqrt(min_area / aspect))
  max_height = _lrint(jnp.sqrt(max_area / aspect))
  # Largest max_height with round(max_height * aspect) <= width (kernel: kEps, then -1 if needed).
  fit = jnp.floor((width.astype(jnp.float32) + 0.5 - 1e-7) / aspect).astype(jnp.int32)
  fit = jnp.where(_lrint(fit * aspect) > width, fit - 1, fit)
  max_height = jnp.where(_lrint(max_height * aspect) > width, fit, max_height)
  max_height = jnp.minimum(max_height, height)
  min_height = jnp.minimum(min_height, max_height)
  # Uniform integer in the closed range [min_height, max_height].
  span = (max_height - min_height + 1).astype(jnp.float32)
  crop_h = min_height + jnp.floor(jax.random.uniform(k_height, shape) * span).astype(jnp.int32)
  crop_w = _lrint(crop_h * aspect)
  area = (crop_w * crop_h).astype(jnp.float32)
  # Rounding fix-ups of the kernel: one step up if too small, one step down if too large.
  crop_h = jnp.where(area < min_area, crop_h + 1, crop_h)
  crop_w = jnp.where(area < min_area, _lrint(crop_h * aspect), crop_w)
  area = (crop_w * crop_h).astype(jnp.float32)
  crop_h = jnp.where(area > max_area, crop_h - 1, crop_h)
  crop_w = jnp.where(area > max_area, _lrint(crop_h * aspect), crop_w)
  area = (crop_w * crop_h).astype(jnp.float32)
  valid = (area >= min_area) & (area <= max_area) & (crop_w <= width) & (crop_h <= height)
  valid &= (crop_w > 0) & (crop_h > 0)
  # Overlap constraint with the whole-image bbox: crop must cover >= 10 % of the image.
  valid &= area >= MIN_OBJECT_COVERED * image_area
  # Offsets ~ Uniform{0, ..., H - h - 1} (kernel: random->Uniform(H - h)), 0 when h == H.
  y = jnp.floor(jax.random.uniform(k_y, shape) * jnp.maximum(height - crop_h, 0)).astype(jnp.int32)
  x = jnp.floor(jax.random.uniform(k_x, shape) * jnp.maximum(width - crop_w, 0)).astype(jnp.int32)
  first = jnp.argmax(valid)
  boxes = jnp.stack([y, x, crop_h, crop_w], axis=-1)  # [attempts, 4]
  whole = jnp.stack([jnp.int32(0), jnp.int32(0), height, width])
  return jnp.where(jnp.any(valid), boxes[first], whole)


def _keys_cubic(distance: jax.Array, a: float = -0.5) -> jax.Array:
  """Keys cubic convolution kernel (TF2 bicubic uses a = -0.5)."""
  d = jnp.abs(distance)
  near = ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
  far = ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
  return jnp.where(d <= 1.0, near, jnp.where(d < 2.0, far, 0.0))


def _resize_matrix(start: jax.Array, length: jax.Array, in_size: int, out_size: int) -> jax.Array:
  """[out_size, in_size] bicubic weights resampling pixels [start, start + length) to out_size.

  TF `ResizeBicubic(half_pixel_centers=True)`: source coordinate (o + 0.5) * length / out - 0.5
  in crop pixels; the 4 Keys taps outside the crop are dropped and the rest renormalised.
  """
  scale = length.astype(jnp.float32) / out_size
  source = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale - 0.5  # [out]
  pixel = jnp.arange(in_size) - start  # [in], position inside the crop
  weights = _keys_cubic(source[:, None] - pixel[None, :].astype(jnp.float32))
  weights = jnp.where((pixel >= 0) & (pixel < length), weights, 0.0)
  return weights / jnp.sum(weights, axis=1, keepdims=True)


def crop_and_resize(image: jax.Array, box: jax.Array, image_size: int) -> jax.Array:
  """Crop `box` out of a float [H, W, 3] image and bicubic-resize it to [S, S, 3]."""
  height, width = image.shape[0], image.shape[1]
  rows = _resize_matrix(box[0], box[2], height, image_size)  # [S, H]
  cols = _resize_matrix(box[1], box[3], width, image_size)  # [S, W]
  hi = jax.lax.Precision.HIGHEST  # Interpolation weights must not be rounded to bf16 on TPU.
  return jnp.einsum('sh,hwc,tw->stc', rows, image, cols, precision=hi)


def random_flip(key: jax.Array, image: jax.Array) -> jax.Array:
  """Horizontal flip with p=0.5 (tf.image.stateless_random_flip_left_right)."""
  return jnp.where(jax.random.uniform(key) < FLIP_PROBABILITY, image[:, ::-1], image)


# ----------------------------------------------------------------------------- colour


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
  return image * factor  # Official 'simclrv2' brightness is multiplicative.


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """tf.image.adjust_contrast: (x - mean) * f + mean, mean per channel over H, W."""
  mean = jnp.mean(image, axis=(0, 1), keepdims=True)
  return (image - mean) * factor + mean


def rgb_to_hsv(image: jax.Array) -> jax.Array:
  """tf.image.rgb_to_hsv for [..., 3] in [0, 1]; hue in [0, 1)."""
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  value = jnp.max(image, axis=-1)
  chroma = value - jnp.min(image, axis=-1)
  safe_chroma = jnp.where(chroma > 0, chroma, 1.0)
  saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
  hue = jnp.where(
    value == r, (g - b) / safe_chroma,
    jnp.where(value == g, (b - r) / safe_chroma + 2.0, (r - g) / safe_chroma + 4.0))
  hue = jnp.where(chroma > 0, jnp.mod(hue / 6.0, 1.0), 0.0)
  return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(image: jax.Array) -> jax.Array:
  """tf.image.hsv_to_rgb (the same piecewise-linear form as the TF kernel)."""
  hue, saturation, value = image[..., 0], image[..., 1], image[..., 2]
  dh = hue * 6.0
  red = jnp.clip(jnp.abs(dh - 3.0) - 1.0, 0.0, 1.0)
  green = jnp.clip(2.0 - jnp.abs(dh - 2.0), 0.0, 1.0)
  blue = jnp.clip(2.0 - jnp.abs(dh - 4.0), 0.0, 1.0)
  rgb = jnp.stack([red, green, blue], axis=-1)
  return value[..., None] * (1.0 - saturation[..., None] + saturation[..., None] * rgb)


def to_grayscale(image: jax.Array) -> jax.Array:
  """tf.image.rgb_to_grayscale (0.2989, 0.5870, 0.1140), tiled to 3 channels (official)."""
  gray = jnp.tensordot(image, jnp.asarray(GRAYSCALE_WEIGHTS, image.dtype), axes=[[-1], [0]])
  return jnp.repeat(gray[..., None], 3, axis=-1)


def jitter_factors(key: jax.Array, strength: float) -> jax.Array:
  """[4] draws: brightness, contrast, saturation factors and the hue delta (official ranges)."""
  amount, hue = 0.8 * strength, 0.2 * strength
  low = jnp.array([max(0.0, 1.0 - amount), 1.0 - amount, 1.0 - amount, -hue], jnp.float32)
  high = jnp.array([1.0 + amount, 1.0 + amount, 1.0 + amount, hue], jnp.float32)
  return jax.random.uniform(key, (4,), jnp.float32, low, high)


def color_jitter(key: jax.Array, image: jax.Array, strength: float) -> jax.Array:
  """Official `color_jitter(random_order=True)`: 4 ops in a random order, clip after each."""
  k_order, k_factors = jax.random.split(key)
  factors = jitter_factors(k_factors, strength)
  order = jax.random.permutation(k_order, 4)  # Official: tf.random.shuffle(tf.range(4)).

  def apply(position, x):
    # Under vmap a lax.switch evaluates every branch; saturation and hue share one HSV round
    # trip (the op not chosen gets factor 1 / delta 0, an exact identity), halving the work.
    op = order[position]
    hsv = rgb_to_hsv(x)
    saturation = jnp.clip(hsv[..., 1] * jnp.where(op == 2, factors[2], 1.0), 0.0, 1.0)
    hue = jnp.mod(hsv[..., 0] + jnp.where(op == 3, factors[3], 0.0), 1.0)
    shifted = hsv_to_rgb(jnp.stack([hue, saturation, hsv[..., 2]], axis=-1))
    x = jnp.where(op == 0, adjust_brightness(x, factors[0]),
                  jnp.where(op == 1, adjust_contrast(x, factors[1]), shifted))
    return jnp.clip(x, 0.0, 1.0)

  return jax.lax.fori_loop(0, 4, apply, image)


def random_color_jitter(key: jax.Array, image: jax.Array, strength: float) -> jax.Array:
  """Official `random_color_jitter`: jitter with p=0.8, then independently gray with p=0.2."""
  k_apply, k_jitter, k_gray = jax.random.split(key, 3)
  jittered = color_jitter(k_jitter, image, strength)
  image = jnp.where(jax.random.uniform(k_apply) < COLOR_JITTER_PROBABILITY, jittered, image)
  return jnp.where(jax.random.uniform(k_gray) < GRAYSCALE_PROBABILITY, to_grayscale(image), image)


# ----------------------------------------------------------------------------- blur


def _blur_matrix(size: int, sigma: jax.Array, kernel_size: int) -> jax.Array:
  """[size, size] banded matrix of the normalised Gaussian taps, zero 'SAME' padding (official)."""
  radius = kernel_size // 2
  offset = jnp.arange(size)[None, :] - jnp.arange(size)[:, None]  # [out, in]
  taps = jnp.exp(-jnp.square(offset.astype(jnp.float32)) / (2.0 * jnp.square(sigma)))
  norm = jnp.sum(jnp.exp(-jnp.square(jnp.arange(-radius, radius + 1.0)) / (2.0 * sigma**2)))
  return jnp.where(jnp.abs(offset) <= radius, taps, 0.0) / norm


def gaussian_blur(image: jax.Array, sigma: jax.Array, kernel_size: int) -> jax.Array:
  """Separable Gaussian blur of one [H, W, C] image (official `gaussian_blur`)."""
  rows = _blur_matrix(image.shape[0], sigma, kernel_size)
  cols = _blur_matrix(image.shape[1], sigma, kernel_size)
  hi = jax.lax.Precision.HIGHEST
  return jnp.einsum('sh,hwc,tw->stc', rows, image, cols, precision=hi)


def blur_sigma(key: jax.Array) -> jax.Array:
  return jax.random.uniform(key, (), jnp.float32, *BLUR_SIGMA_RANGE)


def random_blur(key: jax.Array, image: jax.Array) -> jax.Array:
  """Per-image blur: sigma ~ U[0.1, 2], kernel image_size // 10, applied with p=0.5, clip."""
  k_sigma, k_apply = jax.random.split(key)
  blurred = gaussian_blur(image, blur_sigma(k_sigma), image.shape[0] // 10)
  image = jnp.where(jax.random.uniform(k_apply) < BLUR_PROBABILITY, blurred, image)
  return jnp.clip(image, 0.0, 1.0)


def batch_random_blur(key: jax.Array, images: jax.Array) -> jax.Array:
  """Official `batch_random_blur` on one replica's batch [B, S, S, 3]: one sigma for the batch,
  blurred vs original per example with p=0.5, clip."""
  k_sigma, k_apply = jax.random.split(key)
  sigma = blur_sigma(k_sigma)
  blurred = jax.vmap(lambda x: gaussian_blur(x, sigma, images.shape[1] // 10))(images)
  keep = jax.random.uniform(k_apply, (images.shape[0], 1, 1, 1)) < BLUR_PROBABILITY
  return jnp.clip(jnp.where(keep, blurred, images), 0.0, 1.0)


# ----------------------------------------------------------------------------- views


def train_view(
  key: jax.Array, canvas: jax.Array, size: jax.Array, image_size: int,
  color_jitter_strength: float, blur_per_image: bool = False,
) -> jax.Array:
  """One training view [S, S, 3] float32 in [0, 1] of one image on a uint8 canvas [C, C, 3].

  The image occupies canvas[:size[0], :size[1]] (the rest is padding, never read: the crop box
  lies inside the image and the resize weights vanish outside the box). Official order: random
  resized crop -> flip -> colour (jitter p=0.8, gray p=0.2, when strength > 0) -> clip
  [-> per-image blur with blur_per_image; the official per-replica blur is `batch_random_blur`].
  """
  k_crop, k_flip, k_color, k_blur = jax.random.split(key, 4)
  box = crop_box(k_crop, size[0], size[1])
  image = crop_and_resize(to_float(canvas), box, image_size)
  image = random_flip(k_flip, image)
  if color_jitter_strength > 0:
    image = random_color_jitter(k_color, image, color_jitter_strength)
  image = jnp.clip(image, 0.0, 1.0)
  if blur_per_image:
    image = random_blur(k_blur, image)
  return image


def center_crop_box(height: jax.Array, width: jax.Array, crop_proportion: float) -> jax.Array:
  """Official `center_crop` box [offset_y, offset_x, side, side] (int32) for a square view.

  side = rint(crop_proportion * min(H, W)) (official `_compute_crop_shape` with aspect 1),
  offsets ((H - side) + 1) // 2 and ((W - side) + 1) // 2.
  """
  height, width = jnp.asarray(height, jnp.int32), jnp.asarray(width, jnp.int32)
  side = _lrint(crop_proportion * jnp.minimum(height, width).astype(jnp.float32))
  return jnp.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def eval_view(
  canvas: jax.Array, size: jax.Array, image_size: int, crop_proportion: float = CROP_PROPORTION
) -> jax.Array:
  """The eval view [S, S, 3] float32 in [0, 1] of one image on a uint8 canvas (official
  `preprocess_for_eval`): centre crop, bicubic resize, clip. At image_size <= 32 (CIFAR) the
  official code does not crop (`data.py`: test_crop = image_size > 32); the image is still
  resized, which at equal size is exactly the identity. A padding example (size 0) gives zeros.
  """
  height, width = jnp.maximum(size[0], 1), jnp.maximum(size[1], 1)
  if image_size > 32:
    box = center_crop_box(height, width, crop_proportion)
  else:
    box = jnp.stack([jnp.int32(0), jnp.int32(0), height, width])
  image = crop_and_resize(to_float(canvas), box, image_size)
  return jnp.clip(image, 0.0, 1.0)
