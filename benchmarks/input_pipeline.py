"""Input throughput of the one data path: the host half per CPU core, the device half per device.

    python benchmarks/input_pipeline.py --batch=64 --batches=8

    python benchmarks/input_pipeline.py --sizes=224 --jpeg_side=400 --jpeg_noise=12 --skip_device

Sources, from the embedded CIFAR-10 demo photos:
  * 32 px: decoded uint8 images held in memory (as data.cache=True after the first epoch);
  * 224 px: the photos upscaled to --jpeg_side square and JPEG-encoded (an ImageNet-like load),
    held as bytes and decoded by the source as a folder or tfds source decodes them.
Host ('canvas'): `pipeline.make_train_dataset`, decode and place on the canvas (--canvas, default
the image size at 32 px and 512 at 224) - all the host does for training; images/s and per core.
Device: `views.train_views` jitted on a canvas batch already on the device: 'crop_flip' (one view,
fine-tuning) and 'full' (two views, colour jitter, blur at 224), images/s (source images).
"""

import argparse
import io
import os
import statistics
import time

import common  # noqa: F401  (puts the repo root on sys.path)
import jax
import numpy as np

from simclr_jax.data import resident


def _jpeg_bytes(images: np.ndarray, side: int, noise: float = 0.0) -> list[bytes]:
  """Quality-90 4:2:0 JPEGs of the images upscaled to side x side.

  Upscaled 32 px photos are far smoother than real photos (7 KB at 256 px); Gaussian noise of sd
  `noise` grey levels gives them photo-like entropy (~60 KB at 400 px with noise 12; ImageNet
  averages ~110 KB at ~400x350), which matters because entropy decoding cannot be cropped.
  """
  from PIL import Image

  rng = np.random.default_rng(0)
  encoded = []
  for image in images:
    pixels = np.asarray(Image.fromarray(image).resize((side, side), Image.BICUBIC), np.float32)
    if noise:
      pixels = np.clip(pixels + rng.normal(0.0, noise, pixels.shape), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, 'JPEG', quality=90)
    encoded.append(buffer.getvalue())
  return encoded


def _host_source(images: np.ndarray, image_size: int, jpeg_side: int, noise: float):
  """The examples in memory as a `sources.Source`: uint8 images at 32 px; at 224 px JPEG bytes,
  decoded by the source's reader as those of a folder or a tfds split are."""
  import tensorflow as tf

  from simclr_jax.data import sources

  count = len(images)
  fields = {'label': np.zeros(count, np.int32), 'index': np.arange(count, dtype=np.int64)}
  if image_size <= 32:
    fields['image'] = images
  else:
    fields['encoded'] = _jpeg_bytes(images, jpeg_side, noise)
  examples = tf.data.Dataset.from_tensor_slices(fields)
  return sources.Source(num_classes=1, class_names=('all',), host_indices=np.arange(count),
                        split_size=count, items=lambda: examples)


def host_images_per_s(images, image_size: int, canvas: int, batch: int, batches: int,
                      jpeg_side: int = 256, noise: float = 0.0) -> float:
  from simclr_jax.data import pipeline

  source = _host_source(images, image_size, jpeg_side, noise)
  dataset = pipeline.make_train_dataset(
    source, seed=0, host_batch_size=batch, shuffle_buffer=4 * batch, canvas_size=canvas,
    threadpool_size=os.cpu_count())
  iterator = dataset.as_numpy_iterator()
  for _ in range(2):  # Warm-up: fills the shuffle buffer and the prefetch.
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch / (time.perf_counter() - start)


def device_images_per_s(images, image_size: int, canvas: int, mode: str, batch: int,
                        batches: int):
  """(images/s, compile seconds) of the device half on a canvas batch already on the device."""
  import jax.numpy as jnp

  from simclr_jax.data import views

  side = images.shape[1] if image_size <= 32 else min(canvas, 400)
  if side != images.shape[1]:  # Upscaled photos on the canvas, as the host would send them.
    from PIL import Image
    images = np.stack([np.asarray(Image.fromarray(x).resize((side, side), Image.BICUBIC))
                       for x in images[:batch]])
  canvases = np.zeros((batch, canvas, canvas, 3), np.uint8)
  canvases[:, :side, :side] = images[:batch]
  on_device = jax.device_put(canvases)
  sizes = jnp.full((batch, 2), side, jnp.int32)
  full = mode == 'full'
  fn = jax.jit(lambda k, x: views.train_views(
    jax.random.split(k, batch), x, sizes, image_size=image_size, num_views=2 if full else 1,
    color_jitter_strength=(0.5 if image_size <= 32 else 1.0) if full else 0.0,
    blur='batch' if full and image_size > 32 else '', blur_key=jax.random.key(5)))
  start = time.perf_counter()
  jax.block_until_ready(fn(jax.random.key(0), on_device))
  compile_s = time.perf_counter() - start
  times = common.time_calls(
    lambda: jax.block_until_ready(fn(jax.random.key(1), on_device)), batches)
  return batch / statistics.median(times), compile_s


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--batches', type=int, default=8, help='timed batches per measurement')
  parser.add_argument('--sizes', default='32,224')
  parser.add_argument('--jpeg_side', type=int, default=256, help='side of the 224 px JPEGs')
  parser.add_argument('--jpeg_noise', type=float, default=0.0, help='noise sd, grey levels')
  parser.add_argument('--canvas', type=int, default=0, help='canvas side (0: see docstring)')
  parser.add_argument('--skip_host', action='store_true', help='device augmentation only')
  parser.add_argument('--skip_device', action='store_true', help='host pipelines only')
  parser.add_argument('--output', default='')
  args = parser.parse_args(argv)
  images = resident.load_split('demo', 'train').images  # uint8 [1000, 32, 32, 3]
  cores = os.cpu_count()
  rows = []
  for image_size in (int(s) for s in args.sizes.split(',')):
    canvas = args.canvas or (image_size if image_size <= 32 else 512)
    if not args.skip_host:
      host = host_images_per_s(images, image_size, canvas, args.batch, args.batches,
                               args.jpeg_side, args.jpeg_noise)
      rows.append({'image_size': image_size, 'mode': 'canvas', 'canvas': canvas,
                   'host_images_per_s': host, 'host_images_per_s_per_core': host / cores})
      print(rows[-1], flush=True)
    if not args.skip_device:
      for mode in ('crop_flip', 'full'):
        device, compile_s = device_images_per_s(images, image_size, canvas, mode, args.batch,
                                                args.batches)
        rows.append({'image_size': image_size, 'mode': mode, 'canvas': canvas,
                     'device_images_per_s': device, 'device_compile_s': compile_s})
        print(rows[-1], flush=True)
  common.print_table(rows)
  results = {'batch': args.batch, 'cpu_cores': cores, 'jpeg_side': args.jpeg_side,
             'jpeg_noise': args.jpeg_noise, 'rows': rows,
             'note': "'full' images/s counts source images (two views each)."}
  common.write_json(args.output, 'input_pipeline', results)
  return results


if __name__ == '__main__':
  main()
