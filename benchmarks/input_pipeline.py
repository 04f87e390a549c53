"""Input throughput: the host tf.data pipeline (per CPU core) against augmentation on device.

    python benchmarks/input_pipeline.py --batch=64 --batches=8

Sources, from the embedded CIFAR-10 demo photos:
  * 32 px: decoded uint8 images held in memory (as data.cache=True after the first epoch);
  * 224 px: the photos upscaled to 256x256 and JPEG-encoded, decoded in the pipeline (an
    ImageNet-like load: JPEG decode + crop + resize to 224).
Host modes: 'crop_flip' (`make_finetune_dataset`) and 'full' (`make_pretrain_dataset`: two views,
colour jitter, blur at 224), images/s of source images and per CPU core. Device mode:
`device_augment.pretrain_views` / `finetune_views` jitted on a uint8 batch already on device.
"""

import argparse
import io
import os
import statistics
import time

import common  # noqa: F401  (puts the repo root on sys.path)
import jax
import numpy as np

from simclr_jax.data import device_augment, device_data


def _jpeg_bytes(images: np.ndarray, side: int) -> list[bytes]:
  from PIL import Image

  encoded = []
  for image in images:
    buffer = io.BytesIO()
    Image.fromarray(image).resize((side, side), Image.BICUBIC).save(buffer, 'JPEG', quality=90)
    encoded.append(buffer.getvalue())
  return encoded


def _host_source(images: np.ndarray, image_size: int):
  import tensorflow as tf

  labels = np.zeros(len(images), np.int32)
  index = np.arange(len(images), dtype=np.int64)
  if image_size <= 32:
    return tf.data.Dataset.from_tensor_slices({'image': images, 'label': labels, 'index': index})
  files = tf.data.Dataset.from_tensor_slices(
    {'jpeg': _jpeg_bytes(images, 256), 'label': labels, 'index': index})
  decode = lambda x: {'image': tf.io.decode_jpeg(x['jpeg'], channels=3), 'label': x['label'],
                      'index': x['index']}
  return files.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def host_images_per_s(images, image_size: int, mode: str, batch: int, batches: int) -> float:
  from simclr_jax.data import pipeline

  common_args = dict(seed=0, host_batch_size=batch, image_size=image_size,
                     shuffle_buffer=4 * batch, threadpool_size=os.cpu_count())
  source = _host_source(images, image_size)
  if mode == 'crop_flip':
    dataset = pipeline.make_finetune_dataset(source, **common_args)
  else:
    dataset = pipeline.make_pretrain_dataset(
      source, color_jitter_strength=0.5 if image_size <= 32 else 1.0,
      use_blur=image_size > 32, num_local_devices=1, **common_args)
  iterator = dataset.as_numpy_iterator()
  for _ in range(2):  # Warm-up: fills the shuffle buffer and the prefetch.
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch / (time.perf_counter() - start)


def device_images_per_s(images, image_size: int, mode: str, batch: int, batches: int):
  """(images/s, compile seconds) of device augmentation on a resident uint8 batch."""
  if image_size > 32:  # Resize on the host once: the device input is then 256 px uint8.
    from PIL import Image
    images = np.stack([np.asarray(Image.fromarray(x).resize((256, 256), Image.BICUBIC))
                       for x in images[:batch]])
  on_device = jax.device_put(images[:batch])
  if mode == 'crop_flip':
    fn = jax.jit(lambda k, x: device_augment.finetune_views(k, x, image_size))
  else:
    fn = jax.jit(lambda k, x: device_augment.pretrain_views(
      k, x, image_size, 0.5 if image_size <= 32 else 1.0, image_size > 32))
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
  parser.add_argument('--skip_host', action='store_true', help='device augmentation only')
  parser.add_argument('--output', default='')
  args = parser.parse_args(argv)
  images = device_data.load_split('demo', 'train').images  # uint8 [1000, 32, 32, 3]
  cores = os.cpu_count()
  rows = []
  for image_size in (int(s) for s in args.sizes.split(',')):
    for mode in ('crop_flip', 'full'):
      row = {'image_size': image_size, 'mode': mode}
      if not args.skip_host:
        host = host_images_per_s(images, image_size, mode, args.batch, args.batches)
        row.update(host_images_per_s=host, host_images_per_s_per_core=host / cores)
      device, compile_s = device_images_per_s(images, image_size, mode, args.batch, args.batches)
      row.update(device_images_per_s=device, device_compile_s=compile_s)
      rows.append(row)
      print(row, flush=True)
  common.print_table(rows)
  results = {'batch': args.batch, 'cpu_cores': cores, 'rows': rows,
             'note': "'full' images/s counts source images (two views each)."}
  common.write_json(args.output, 'input_pipeline', results)
  return results


if __name__ == '__main__':
  main()
