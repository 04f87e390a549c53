"""Tests for simclr_jax/data/eval_view.py: the official eval view (centre crop, bicubic resize)."""

import numpy as np
import pytest
import tensorflow as tf

from simclr_jax.data import eval_view


@pytest.mark.parametrize(
  'shape, expected',
  [((256, 256), (16, 16, 224)), ((375, 500), (24, 86, 328)), ((64, 48), (11, 3, 42))],
)
def test_center_crop_box_matches_official_formula(shape, expected):
  box = eval_view.center_crop_box(tf.constant(shape + (3,)), 0.875).numpy()
  assert tuple(box) == expected + (expected[2],)


def test_eval_view_is_numpy_centre_crop_then_bicubic_resize():
  import jax  # An independent bicubic (Keys a=-0.5, half-pixel) implementation.

  image = np.random.default_rng(1).uniform(size=(64, 48, 3)).astype(np.float32)
  view = eval_view.preprocess_for_eval(image, 40).numpy()
  side = int(np.rint(0.875 * 48))
  top, left = (64 - side + 1) // 2, (48 - side + 1) // 2
  crop = image[top : top + side, left : left + side]
  expected = tf.image.resize(crop, [40, 40], method='bicubic', antialias=False).numpy()
  np.testing.assert_allclose(view, np.clip(expected, 0, 1), atol=1e-6)
  jax_expected = np.asarray(jax.image.resize(crop, (40, 40, 3), 'bicubic', antialias=False))
  # TF's resize_bicubic reads its weights from a 1024-entry table: agreement to ~1e-3, not 1e-6.
  np.testing.assert_allclose(view, np.clip(jax_expected, 0, 1), atol=2e-3)


def test_eval_view_has_no_crop_at_cifar_size():
  image = np.random.default_rng(2).uniform(size=(32, 32, 3)).astype(np.float32)
  np.testing.assert_array_equal(eval_view.preprocess_for_eval(image, 32).numpy(), image)
  bigger = np.random.default_rng(3).uniform(size=(36, 36, 3)).astype(np.float32)
  expected = np.clip(tf.image.resize(bigger, [32, 32], method='bicubic').numpy(), 0, 1)
  np.testing.assert_allclose(eval_view.preprocess_for_eval(bigger, 32).numpy(), expected, atol=1e-6)
