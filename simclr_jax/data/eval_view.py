"""The eval view (official `preprocess_for_eval`) on the host, and window decoding for it.

Training augmentations are not here: every random op runs on the device (device_augment.py).
Eval is deterministic: centre crop (none when image_size <= 32) -> bicubic resize -> clip, in
TensorFlow on the host, from a decoded uint8 image or the encoded bytes (JPEGs: only the centre
window is decoded). Images are float32 in [0, 1]; no mean/std normalisation (official).
"""

import tensorflow as tf

CROP_PROPORTION = 0.875  # Official `data_util.py`.


def _resize_bicubic(image: tf.Tensor, image_size: int) -> tf.Tensor:
  # Official TF2: tf.image.resize(BICUBIC) = Keys a=-0.5, half-pixel centres, no antialias.
  return tf.image.resize(image, [image_size, image_size], method='bicubic', antialias=False)


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


def slice_crop(image: tf.Tensor, box_fn) -> tuple[tf.Tensor, tf.Tensor]:
  """`decode_crop` for a decoded uint8 image: (image[box_fn(shape)], shape), no copy to float."""
  shape = tf.shape(image)
  box = box_fn(shape)
  return image[box[0]:box[0] + box[2], box[1]:box[1] + box[3]], shape


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
