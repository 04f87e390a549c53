"""Tests for simclr_jax/data/device_augment.py against the official TF ops (official_augment.py).

Ops are compared pixel-wise with TF; random choices are compared in distribution with the TF
pipeline over ~2000 draws each (two-sample KS for continuous draws, binomial tolerance for
decisions).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import official_augment as augment
from simclr_jax.data import device_augment as da

NUM_DRAWS = 2000


def _assert_same_frequency(count_a: int, count_b: int, num: int, p: float) -> None:
  """Both counts within 4 binomial sd of p (a correct op fails ~1 in 16k runs)."""
  tolerance = 4.0 * math.sqrt(p * (1 - p) / num)
  for count in (count_a, count_b):
    assert abs(count / num - p) < tolerance, (count_a / num, count_b / num, p)


def _ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
  """Two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b|."""
  grid = np.sort(np.concatenate([a, b]))
  cdf_a = np.searchsorted(np.sort(a), grid, side='right') / len(a)
  cdf_b = np.searchsorted(np.sort(b), grid, side='right') / len(b)
  return float(np.max(np.abs(cdf_a - cdf_b)))


# KS critical value at alpha = 1e-3 for n = m = 2000: 1.95 * sqrt(2 / 2000) = 0.062.
KS_CRITICAL = 1.95 * math.sqrt(2.0 / NUM_DRAWS)


def _tf_over_seeds(fn, num: int = NUM_DRAWS) -> np.ndarray:
  """fn(seed [2]) stacked over seeds (i, 7), in one tf.function."""
  seeds = tf.stack([tf.range(num, dtype=tf.int64), tf.fill([num], tf.constant(7, tf.int64))], 1)
  return tf.function(lambda s: tf.map_fn(fn, s, fn_output_signature=tf.float32))(seeds).numpy()


def _jax_over_keys(fn, num: int = NUM_DRAWS) -> np.ndarray:
  return np.asarray(jax.jit(jax.vmap(fn))(jax.random.split(jax.random.key(1), num)))


def _image(height: int = 8, width: int = 8) -> np.ndarray:
  return np.random.default_rng(0).uniform(0.05, 0.95, (height, width, 3)).astype(np.float32)


def test_views_shape_dtype_range_determinism_and_blur_modes():
  from simclr_jax.data import views

  canvases = np.random.default_rng(0).integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
  sizes = jnp.asarray([[20, 24], [24, 17]], jnp.int32)  # Two images on padded canvases.
  # Colour jitter dominates compile time: once with it (per-image blur), once without (batch).
  for strength, blur in ((1.0, 'image'), (0.0, 'batch')):
    make = jax.jit(lambda k: views.train_views(
      jax.random.split(k, 2), canvases, sizes, image_size=16, num_views=2,
      color_jitter_strength=strength, blur=blur, blur_key=jax.random.key(9)))
    a, b = make(jax.random.key(0))
    again, _ = make(jax.random.key(0))
    other, _ = make(jax.random.key(1))
    assert a.shape == b.shape == (2, 16, 16, 3) and a.dtype == jnp.float32
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    np.testing.assert_array_equal(a, again)
    assert not np.allclose(a, b) and not np.allclose(a, other)


def test_padding_of_the_canvas_is_never_read():
  """A view of an image on a canvas equals the view of the bare image, whatever the padding."""
  image = np.random.default_rng(1).integers(0, 256, (13, 21, 3), dtype=np.uint8)
  size = jnp.asarray([13, 21], jnp.int32)
  bare = jax.jit(jax.vmap(lambda k: da.train_view(k, image, size, 16, 1.0)))
  keys = jax.random.split(jax.random.key(4), 64)
  for fill in (0, 255):
    canvas = np.full((32, 32, 3), fill, np.uint8)
    canvas[:13, :21] = image
    padded = jax.jit(jax.vmap(lambda k: da.train_view(k, canvas, size, 16, 1.0)))
    np.testing.assert_allclose(padded(keys), bare(keys), atol=1e-5)  # Summation order only.


@pytest.mark.parametrize('box,size', [((3, 5, 17, 20), 32), ((0, 0, 32, 32), 32),
                                      ((10, 2, 9, 30), 12), ((4, 4, 24, 24), 40)])
def test_crop_and_resize_matches_tf(box, size):
  image = _image(32, 32)
  expected = tf.image.resize(tf.image.crop_to_bounding_box(image, *box), [size, size],
                             method='bicubic', antialias=False).numpy()
  actual = da.crop_and_resize(jnp.asarray(image), jnp.asarray(box), size)
  # TF looks Keys weights up in a 1024-entry table: up to ~5e-4 off when downscaling.
  np.testing.assert_allclose(actual, expected, atol=2e-3)


def _saturation(image, factor):  # What color_jitter does with the HSV round trip.
  hsv = da.rgb_to_hsv(image)
  return da.hsv_to_rgb(hsv.at[..., 1].set(jnp.clip(hsv[..., 1] * factor, 0.0, 1.0)))


def _hue(image, delta):
  hsv = da.rgb_to_hsv(image)
  return da.hsv_to_rgb(hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + delta, 1.0)))


@pytest.mark.parametrize('jax_op,tf_op,factor', [
  (da.adjust_contrast, tf.image.adjust_contrast, 0.7),
  (_saturation, tf.image.adjust_saturation, 1.3),
  (_saturation, tf.image.adjust_saturation, 0.4),
  (_hue, tf.image.adjust_hue, 0.07),
  (_hue, tf.image.adjust_hue, -0.09),
])
def test_colour_ops_match_tf(jax_op, tf_op, factor):
  image = _image()
  np.testing.assert_allclose(jax_op(jnp.asarray(image), factor), tf_op(image, factor), atol=1e-5)


def test_grayscale_and_blur_match_tf():
  image = _image(24, 24)
  np.testing.assert_allclose(da.to_grayscale(jnp.asarray(image)), augment.to_grayscale(image),
                             atol=1e-6)
  for sigma, kernel_size in ((0.3, 3), (1.7, 22)):
    expected = augment.gaussian_blur(tf.constant(image[None, None]), tf.constant([sigma]),
                                     kernel_size).numpy()[0, 0]
    np.testing.assert_allclose(da.gaussian_blur(jnp.asarray(image), sigma, kernel_size),
                               expected, atol=1e-5)


@pytest.mark.parametrize('height,width', [(32, 32), (60, 40)])
def test_crop_boxes_same_distribution_as_tf(height, width):
  tf_boxes = _tf_over_seeds(
    lambda s: tf.cast(augment.distorted_crop_box(tf.constant([height, width, 3]), s), tf.float32))
  jax_boxes = np.asarray(_jax_over_keys(lambda k: da.crop_box(k, height, width)), np.float32)
  for boxes in (tf_boxes, jax_boxes):
    y, x, h, w = boxes.T
    assert np.all(y + h <= height) and np.all(x + w <= width) and np.all(y >= 0) & np.all(x >= 0)
    assert np.all(h * w >= 0.1 * height * width)  # Effective minimum area 0.10 (REFERENCE §5).
  statistics = {
    'area': (tf_boxes[:, 2] * tf_boxes[:, 3], jax_boxes[:, 2] * jax_boxes[:, 3]),
    'aspect': (tf_boxes[:, 3] / tf_boxes[:, 2], jax_boxes[:, 3] / jax_boxes[:, 2]),
    'offset_y': (tf_boxes[:, 0] / (height - tf_boxes[:, 2] + 1),
                 jax_boxes[:, 0] / (height - jax_boxes[:, 2] + 1)),
    'offset_x': (tf_boxes[:, 1] / (width - tf_boxes[:, 3] + 1),
                 jax_boxes[:, 1] / (width - jax_boxes[:, 3] + 1)),
  }
  for name, (tf_values, jax_values) in statistics.items():
    assert _ks_statistic(tf_values, jax_values) < KS_CRITICAL, name
  whole_tf = np.mean(tf_boxes[:, 2] * tf_boxes[:, 3] == height * width)
  whole_jax = np.mean(jax_boxes[:, 2] * jax_boxes[:, 3] == height * width)
  assert abs(whole_tf - whole_jax) < 0.03


def test_brightness_factor_same_distribution_as_tf():
  tf_factors = _tf_over_seeds(lambda s: augment.random_brightness(tf.constant(0.5), 0.4, s) / 0.5)
  jax_factors = _jax_over_keys(lambda k: da.jitter_factors(k, 0.5)[0])
  for factors in (tf_factors, jax_factors):
    assert 0.6 <= factors.min() < 0.62 and 1.38 < factors.max() <= 1.4
  assert _ks_statistic(tf_factors, jax_factors) < KS_CRITICAL
  # Strength 1.5: the lower bound clamps at 0 (official max(0, 1 - 0.8 s)).
  assert float(jnp.min(jax.vmap(lambda k: da.jitter_factors(k, 1.5)[0])(
    jax.random.split(jax.random.key(0), 200)))) >= 0.0


def test_jitter_and_grayscale_frequencies_same_as_tf():
  # A flat colour: jitter always changes it, gray makes the channels equal.
  image = np.broadcast_to(np.float32([0.6, 0.3, 0.2]), (4, 4, 3))

  def outcome(view):  # 0 untouched, 1 jittered (not gray), 2 gray.
    gray = tf.reduce_max(view) - tf.reduce_min(view) < 1e-6
    same = tf.reduce_max(tf.abs(view - image)) < 1e-6
    return tf.where(gray, 2.0, tf.where(same, 0.0, 1.0))

  tf_outcomes = _tf_over_seeds(lambda s: outcome(augment.random_color_jitter(image, 0.5, s)))
  jax_views = _jax_over_keys(lambda k: da.random_color_jitter(k, jnp.asarray(image), 0.5))
  gray = np.ptp(jax_views.reshape(NUM_DRAWS, -1), axis=1) < 1e-6
  same = np.abs(jax_views - image).reshape(NUM_DRAWS, -1).max(1) < 1e-6
  jax_outcomes = np.where(gray, 2, np.where(same, 0, 1))
  _assert_same_frequency(np.sum(tf_outcomes == 2), np.sum(jax_outcomes == 2), NUM_DRAWS, 0.2)
  _assert_same_frequency(np.sum(tf_outcomes == 1), np.sum(jax_outcomes == 1), NUM_DRAWS, 0.64)


def test_color_jitter_applies_the_drawn_ops_in_the_drawn_order():
  image = jnp.asarray(_image())
  for seed in range(4):
    key = jax.random.key(seed)
    k_order, k_factors = jax.random.split(key)
    factors = da.jitter_factors(k_factors, 1.0)
    # Reference: the TF ops one at a time (brightness is multiplicative, official 'simclrv2').
    ops = [lambda x, f: x * f, tf.image.adjust_contrast, tf.image.adjust_saturation,
           tf.image.adjust_hue]
    expected = np.asarray(image)
    for op in np.asarray(jax.random.permutation(k_order, 4)):
      expected = np.clip(ops[op](expected, float(factors[op])), 0.0, 1.0)
    np.testing.assert_allclose(jax.jit(da.color_jitter, static_argnums=2)(key, image, 1.0),
                               expected, atol=1e-5)


def test_jitter_order_is_a_uniform_permutation():
  orders = _jax_over_keys(lambda k: jax.random.permutation(jax.random.split(k)[0], 4), 4000)
  codes = orders @ np.array([64, 16, 4, 1])
  counts = np.bincount(np.unique(codes, return_inverse=True)[1])
  assert len(counts) == 24 and counts.min() > 4000 / 24 * 0.6


def test_flip_frequency_same_as_tf():
  image = _image(4, 4)
  tf_flips = _tf_over_seeds(
    lambda s: tf.cast(tf.reduce_any(tf.image.stateless_random_flip_left_right(image, s) != image),
                      tf.float32))
  jax_flips = _jax_over_keys(lambda k: jnp.any(da.random_flip(k, jnp.asarray(image)) != image))
  _assert_same_frequency(int(tf_flips.sum()), int(jax_flips.sum()), NUM_DRAWS, 0.5)


def test_blur_frequency_and_sigma_range():
  image = _image(20, 20)
  sigmas = _jax_over_keys(da.blur_sigma)
  assert 0.1 <= sigmas.min() < 0.11 and 1.99 < sigmas.max() <= 2.0
  tf_sigmas = _tf_over_seeds(
    lambda s: tf.random.stateless_uniform([], s, *augment.BLUR_SIGMA_RANGE))
  assert _ks_statistic(tf_sigmas, sigmas) < KS_CRITICAL
  blurred = _jax_over_keys(lambda k: jnp.any(jnp.abs(da.random_blur(k, jnp.asarray(image)) - image)
                                             > 1e-6))
  batch = tf.constant(np.broadcast_to(image, (NUM_DRAWS, 20, 20, 3)))
  tf_blurred = augment.batch_random_blur(batch, tf.constant([1, 2]), num_groups=1).numpy()
  tf_count = int(np.sum(np.abs(tf_blurred - image).reshape(NUM_DRAWS, -1).max(1) > 1e-6))
  _assert_same_frequency(tf_count, int(blurred.sum()), NUM_DRAWS, 0.5)
