"""The test reference (tests/official_augment.py) against REFERENCE §5 (official data_util.py).

The JAX ops of the package are compared with this reference in device_augment_test.py.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

import official_augment as augment

NUM_DRAWS = 2000
NUM_DECISION_DRAWS = 10000  # Frequencies to +-0.016 (4 sd), enough to tell 0.2 from 0.25.


def _colourful_image(height: int = 8, width: int = 8) -> tf.Tensor:
  rng = np.random.default_rng(0)
  return tf.constant(rng.uniform(0.05, 0.95, (height, width, 3)), tf.float32)


def _views_over_seeds(image: tf.Tensor, num: int, **kwargs) -> np.ndarray:
  """[num, S, S, 3] views of one image for seeds (i, 17), computed inside tf.data."""
  seeds = tf.data.Dataset.range(num).map(lambda i: tf.stack([i, tf.constant(17, tf.int64)]))
  views = seeds.map(lambda seed: augment.preprocess_for_train(image, seed, **kwargs))
  return next(views.batch(num).as_numpy_iterator())


def _assert_frequency(count: int, num: int, p: float) -> None:
  """Binomial tolerance of 4 standard deviations: a correct op fails ~1 in 16k runs."""
  tolerance = 4.0 * math.sqrt(p * (1 - p) / num)
  assert abs(count / num - p) < tolerance, (count / num, p, tolerance)


def test_train_view_shape_range_and_eager_equals_tf_data():
  image = tf.random.stateless_uniform([40, 30, 3], [0, 1])
  seed = tf.constant([3, 4], tf.int32)
  eager = augment.preprocess_for_train(image, seed, 24, 1.0)
  assert eager.shape == (24, 24, 3) and eager.dtype == tf.float32
  assert 0.0 <= float(tf.reduce_min(eager)) and float(tf.reduce_max(eager)) <= 1.0
  in_data = tf.data.Dataset.from_tensors((image, seed)).map(
    lambda x, s: augment.preprocess_for_train(x, s, 24, 1.0)
  )
  np.testing.assert_array_equal(eager.numpy(), next(in_data.as_numpy_iterator()))


def test_same_seed_same_view_and_different_seeds_differ():
  image = _colourful_image(16, 16)
  first = augment.preprocess_for_train(image, tf.constant([5, 6]), 16, 0.5)
  again = augment.preprocess_for_train(image, tf.constant([5, 6]), 16, 0.5)
  other = augment.preprocess_for_train(image, tf.constant([5, 7]), 16, 0.5)
  np.testing.assert_array_equal(first.numpy(), again.numpy())
  assert not np.allclose(first.numpy(), other.numpy())


def test_crop_box_area_and_aspect_ranges():
  boxes = tf.data.Dataset.range(NUM_DRAWS).map(
    lambda i: augment.distorted_crop_box(tf.constant([224, 224, 3]), tf.stack([i, i + 1]))
  )
  offset_y, offset_x, height, width = next(boxes.batch(NUM_DRAWS).as_numpy_iterator()).T
  assert (offset_y >= 0).all() and (offset_x >= 0).all()
  assert (offset_y + height <= 224).all() and (offset_x + width <= 224).all()
  area = height * width / 224**2
  # The 10% coverage constraint makes the effective minimum area 0.10, not 0.08 (REFERENCE §5).
  assert area.min() >= 0.1 - 1e-3 and area.max() <= 1.0
  assert area.min() < 0.12 and area.max() > 0.9  # The whole range is reached.
  # Height ~ uniform integer in [sqrt(0.08 A / ar), ...]: mean area fraction about 0.42.
  assert 0.38 < area.mean() < 0.47, area.mean()
  aspect = width / height
  assert aspect.min() >= 0.75 - 0.01 and aspect.max() <= 4 / 3 + 0.01  # Rounding of width only.
  assert aspect.min() < 0.77 and aspect.max() > 1.3


def test_random_crop_with_resize_is_crop_of_box_then_bicubic():
  image = tf.random.stateless_uniform([50, 40, 3], [1, 1])
  seed = tf.constant([9, 9])
  y, x, h, w = augment.distorted_crop_box(tf.shape(image), seed).numpy()
  expected = tf.image.resize(image.numpy()[y : y + h, x : x + w], [20, 20], method='bicubic')
  actual = augment.random_crop_with_resize(image, seed, 20)
  np.testing.assert_allclose(actual.numpy(), expected.numpy(), atol=1e-6)


def test_flip_frequency():
  image = _colourful_image()
  views = _views_over_seeds(image, NUM_DECISION_DRAWS, image_size=8, color_jitter_strength=0.0,
                            crop=False)
  unchanged = np.all(views == image.numpy(), axis=(1, 2, 3))
  flipped = np.all(views == image.numpy()[:, ::-1], axis=(1, 2, 3))
  assert np.all(unchanged ^ flipped)
  _assert_frequency(int(flipped.sum()), NUM_DECISION_DRAWS, 0.5)


def test_colour_jitter_p08_and_independent_grayscale_p02():
  image = _colourful_image()
  num = NUM_DECISION_DRAWS
  views = _views_over_seeds(image, num, image_size=8, color_jitter_strength=1.0, crop=False,
                            flip=False)
  original = image.numpy()
  gray_original = augment.to_grayscale(image).numpy()
  is_original = np.all(views == original, axis=(1, 2, 3))
  is_gray_original = np.all(np.abs(views - gray_original) < 1e-6, axis=(1, 2, 3))
  is_gray = np.all(views == views[..., :1], axis=(1, 2, 3))
  jittered = ~is_original & ~is_gray_original
  # The four (jitter, gray) outcomes have probabilities 0.8*0.8, 0.8*0.2, 0.2*0.8, 0.2*0.2.
  _assert_frequency(int(jittered.sum()), num, 0.8)
  _assert_frequency(int(is_gray.sum()), num, 0.2)
  _assert_frequency(int(is_original.sum()), num, 0.2 * 0.8)
  _assert_frequency(int(is_gray_original.sum()), num, 0.2 * 0.2)
  _assert_frequency(int((jittered & is_gray).sum()), num, 0.8 * 0.2)
  _assert_frequency(int((jittered & ~is_gray).sum()), num, 0.8 * 0.8)


@pytest.mark.parametrize('strength', [0.5, 1.0, 1.5])
def test_brightness_is_multiplicative_with_simclrv2_range(strength):
  constant = tf.fill([2, 2, 3], 0.25)
  factors = np.array([
    float(augment.random_brightness(constant, 0.8 * strength, tf.constant([i, 0]))[0, 0, 0]) / 0.25
    for i in range(300)
  ])
  low, high = max(0.0, 1 - 0.8 * strength), 1 + 0.8 * strength
  assert factors.min() >= low - 1e-6 and factors.max() <= high + 1e-6
  # Uniform on [low, high]: 300 draws come within 3% of the range of both ends.
  assert factors.min() < low + 0.03 * (high - low) and factors.max() > high - 0.03 * (high - low)


def test_colour_jitter_stays_in_unit_range_for_bright_images():
  image = tf.fill([4, 4, 3], 0.97) * tf.constant([1.0, 0.5, 0.2])
  for i in range(50):
    out = augment.color_jitter(image, 1.0, tf.constant([i, 3])).numpy()
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_grayscale_uses_official_luma_weights():
  image = _colourful_image()
  expected = image.numpy() @ np.array([0.2989, 0.5870, 0.1140])
  gray = augment.to_grayscale(image).numpy()
  np.testing.assert_allclose(gray, np.repeat(expected[..., None], 3, axis=-1), atol=1e-3)


def _numpy_kernel(kernel_size: int, sigma: float) -> np.ndarray:
  radius = kernel_size // 2
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  taps = np.exp(-(x**2) / (2 * sigma**2))
  return taps / taps.sum()


@pytest.mark.parametrize('kernel_size, sigma', [(22, 1.3), (3, 0.5), (6, 2.0)])
def test_gaussian_kernel_matches_numpy(kernel_size, sigma):
  taps = augment.gaussian_kernel(kernel_size, sigma).numpy()
  assert taps.shape == (2 * (kernel_size // 2) + 1,)
  np.testing.assert_allclose(taps, _numpy_kernel(kernel_size, sigma), atol=1e-6)


def _sigma_from_response(response: np.ndarray, radius: int, centre: int) -> float:
  """Recovers sigma from a blurred delta: the centre row is k * k[r], and k[r+1]/k[r] =
  exp(-1 / (2 sigma^2))."""
  row = response[centre, centre - radius : centre + radius + 1]
  return math.sqrt(-1.0 / (2.0 * math.log(row[radius + 1] / row[radius])))


def test_batch_blur_one_sigma_per_group_and_zero_padding():
  size, groups, per_group = 64, 4, 3  # kernel_size 6 -> 7 taps, radius 3.
  deltas = np.zeros((groups * per_group, size, size, 3), np.float32)
  deltas[:, 32, 32, :] = 1.0
  deltas[:, 0, 0, :] = 1.0  # A corner delta: zero padding loses the mass outside the image.
  blurred = augment.batch_random_blur(deltas, tf.constant([7, 8]), groups, p=1.0).numpy()
  sigmas = []
  for g in range(groups):
    group = blurred[g * per_group : (g + 1) * per_group]
    for image in group[1:]:
      np.testing.assert_array_equal(image, group[0])
    sigma = _sigma_from_response(group[0, ..., 0], 3, 32)
    assert 0.1 <= sigma <= 2.0
    kernel = _numpy_kernel(6, sigma)
    expected = np.zeros((size, size))
    expected[29:36, 29:36] = np.outer(kernel, kernel)
    expected[:4, :4] = np.outer(kernel[3:], kernel[3:])
    np.testing.assert_allclose(group[0, ..., 1], expected, atol=1e-5)
    sigmas.append(sigma)
  assert len(set(np.round(sigmas, 4))) == groups  # Independent draws per group.


def test_batch_blur_selects_per_example_with_p():
  images = tf.random.stateless_uniform([256, 20, 20, 3], [0, 5])
  chosen = 0
  for i in range(12):
    out = augment.batch_random_blur(images, tf.constant([i, 0]), num_groups=2).numpy()
    assert out.min() >= 0.0 and out.max() <= 1.0
    chosen += int((~np.all(out == images.numpy(), axis=(1, 2, 3))).sum())
  _assert_frequency(chosen, 12 * 256, 0.5)
  unchanged = augment.batch_random_blur(images, tf.constant([1, 1]), num_groups=2, p=0.0)
  np.testing.assert_array_equal(unchanged.numpy(), images.numpy())


def test_batch_blur_eager_equals_tf_data_and_checks_groups():
  images = tf.random.stateless_uniform([8, 30, 30, 3], [0, 6])
  seed = tf.constant([2, 2])
  eager = augment.batch_random_blur(images, seed, num_groups=4).numpy()
  in_data = tf.data.Dataset.from_tensors(images).map(
    lambda x: augment.batch_random_blur(x, seed, num_groups=4)
  )
  np.testing.assert_array_equal(eager, next(in_data.as_numpy_iterator()))
  with pytest.raises(ValueError, match='num_groups=3'):
    augment.batch_random_blur(images, seed, num_groups=3)
