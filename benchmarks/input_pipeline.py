"""Input throughput: the host tf.data pipeline (per CPU core) against augmentation on device.

    python benchmarks/input_pipeline.py --batch=64 --batches=8

    python benchmarks/input_pipeline.py --sizes=224 --jpeg_side=400 --jpeg_noise=12 --skip_device

Sources, from the embedded CIFAR-10 demo photos:
  * 32 px: decoded uint8 images held in memory (as data.cache=True after the first epoch);
  * 224 px: the photos upscaled to --jpeg_side square and JPEG-encoded (an ImageNet-like load),
    read by two host paths (--paths): 'decoded' decodes the whole JPEG in the source
    (`sources.load(decode=True)`), 'crop_decode' passes the bytes (`decode=False`) and the train
    views decode only their crop windows (`decode_and_crop_jpeg`).
Host modes: 'crop_flip' (`make_finetune_dataset`), 'full' (`make_pretrain_dataset`: two views,
colour jitter, blur at 224), at 224 'geometry' (two views, crop + flip only: the host's share
when colour and blur run on the device) and 'raw' (`make_raw_dataset` to 256 px uint8: all the host
does with augmentation on device); images/s of source images and per CPU core. Device mode:
`device_augment.pretrain_views` / `finetune_views` jitted on a uint8 batch already on device.
"""

import argparse
import io
import itertools
import os
import statistics
import time

import common  # noqa: F401  (puts the repo root on sys.path)
import jax
import numpy as np

from simclr_jax.data import device_augment, device_data


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


def _host_source(images: np.ndarray, image_size: int, path: str, jpeg_side: int, noise: float):
  import tensorflow as tf

  labels = np.zeros(len(images), np.int32)
  index = np.arange(len(images), dtype=np.int64)
  if image_size <= 32:
    return tf.data.Dataset.from_tensor_slices({'image': images, 'label': labels, 'index': index})
  files = tf.data.Dataset.from_tensor_slices(
    {'encoded': _jpeg_bytes(images, jpeg_side, noise), 'label': labels, 'index': index})
  if path == 'crop_decode':  # As sources.load(decode=False).
    return files
  decode = lambda x: {'image': tf.io.decode_jpeg(x['encoded'], channels=3), 'label': x['label'],
                      'index': x['index']}
  return files.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def host_images_per_s(images, image_size: int, mode: str, batch: int, batches: int,
                      path: str = 'decoded', jpeg_side: int = 256, noise: float = 0.0) -> float:
  from simclr_jax.data import pipeline

  common_args = dict(seed=0, host_batch_size=batch, shuffle_buffer=4 * batch,
                     threadpool_size=os.cpu_count())
  source = _host_source(images, image_size, path, jpeg_side, noise)
  if mode == 'raw':
    dataset = pipeline.make_raw_dataset(source, raw_size=256, **common_args)
  elif mode == 'crop_flip':
    dataset = pipeline.make_finetune_dataset(source, image_size=image_size, **common_args)
  elif mode == 'geometry':  # Two views, crop + flip only: the host's part if colour is on device.
    dataset = pipeline.make_pretrain_dataset(
      source, color_jitter_strength=0.0, use_blur=False, num_local_devices=1,
      image_size=image_size, **common_args)
  else:
    dataset = pipeline.make_pretrain_dataset(
      source, color_jitter_strength=0.5 if image_size <= 32 else 1.0,
      use_blur=image_size > 32, num_local_devices=1, image_size=image_size, **common_args)
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
  parser.add_argument('--paths', default='decoded,crop_decode', help='224 px host paths')
  parser.add_argument('--jpeg_side', type=int, default=256, help='side of the 224 px JPEGs')
  parser.add_argument('--jpeg_noise', type=float, default=0.0, help='noise sd, grey levels')
  parser.add_argument('--skip_host', action='store_true', help='device augmentation only')
  parser.add_argument('--skip_device', action='store_true', help='host pipelines only')
  parser.add_argument('--output', default='')
  args = parser.parse_args(argv)
  images = device_data.load_split('demo', 'train').images  # uint8 [1000, 32, 32, 3]
  cores = os.cpu_count()
  rows = []
  for image_size in (int(s) for s in args.sizes.split(',')):
    paths = args.paths.split(',') if image_size > 32 else ['decoded']
    modes = ('crop_flip', 'full', 'geometry', 'raw') if image_size > 32 else ('crop_flip', 'full')
    for mode, path in itertools.product(modes, paths):
      row = {'image_size': image_size, 'mode': mode, 'path': path}
      if not args.skip_host:
        host = host_images_per_s(images, image_size, mode, args.batch, args.batches, path,
                                 args.jpeg_side, args.jpeg_noise)
        row.update(host_images_per_s=host, host_images_per_s_per_core=host / cores)
      # Device augmentation does not depend on the host path: measured once per mode.
      if not args.skip_device and mode in ('crop_flip', 'full') and path == paths[0]:
        device, compile_s = device_images_per_s(images, image_size, mode, args.batch,
                                                args.batches)
        row.update(device_images_per_s=device, device_compile_s=compile_s)
      rows.append(row)
      print(row, flush=True)
  common.print_table(rows)
  results = {'batch': args.batch, 'cpu_cores': cores, 'jpeg_side': args.jpeg_side,
             'jpeg_noise': args.jpeg_noise, 'rows': rows,
             'note': "'full' images/s counts source images (two views each)."}
  common.write_json(args.output, 'input_pipeline', results)
  return results


if __name__ == '__main__':
  main()
