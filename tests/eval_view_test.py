"""Tests for the eval view (device_augment.eval_view) against the official TF preprocess_for_eval
(tests/official_augment.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import official_augment
from simclr_jax.data import device_augment as da


@pytest.mark.parametrize(
  'shape, expected',
  [((256, 256), (16, 16, 224)), ((375, 500), (24, 86, 328)), ((64, 48), (11, 3, 42))],
)
def test_center_crop_box_matches_official_formula(shape, expected):
  box = da.center_crop_box(*shape, 0.875)
  assert tuple(np.asarray(box)) == expected + (expected[2],)


def _on_canvas(image: np.ndarray, side: int) -> tuple[jax.Array, jax.Array]:
  """The image at the top left of a canvas whose padding is noise (it must never be read)."""
  canvas = np.random.default_rng(9).integers(0, 256, (side, side, 3), np.uint8)
  canvas[: image.shape[0], : image.shape[1]] = image
  return jnp.asarray(canvas), jnp.asarray(image.shape[:2], jnp.int32)


@pytest.mark.parametrize('shape, image_size', [((64, 48), 40), ((36, 36), 32), ((32, 32), 32)])
def test_eval_view_is_the_official_one(shape, image_size):
  image = np.random.default_rng(1).integers(0, 256, shape + (3,), np.uint8)
  canvas, size = _on_canvas(image, 70)
  view = jax.jit(da.eval_view, static_argnums=2)(canvas, size, image_size)
  expected = official_augment.preprocess_for_eval(image.astype(np.float32) / 255.0, image_size)
  # TF's resize_bicubic reads its weights from a 1024-entry table: agreement to ~1e-3 when scaling.
  np.testing.assert_allclose(view, expected.numpy(), atol=2e-3)


def test_eval_view_at_cifar_size_is_the_image_exactly():
  image = np.random.default_rng(2).integers(0, 256, (32, 32, 3), np.uint8)
  view = da.eval_view(*_on_canvas(image, 32), 32)
  converted = tf.image.convert_image_dtype(image, tf.float32).numpy()  # Official uint8 -> float.
  np.testing.assert_array_equal(view, converted)


def test_a_padding_example_gives_zeros_not_nan():
  view = da.eval_view(jnp.zeros([8, 8, 3], jnp.uint8), jnp.zeros([2], jnp.int32), 40)
  assert np.all(np.asarray(view) == 0.0)
