"""Peak host memory of the pretraining input pipeline on an image folder (demo data settings).

    python benchmarks/input_memory.py [FOLDER] [--no_cache] [--batches=N]

Runs `data.input.make_train_data` (pretrain) with configs/demo.py's data settings (32 px, cache
allowed unless --no_cache) and a host batch of 16 for three epochs (or N batches), then prints
the process's peak RSS (ru_maxrss). FOLDER defaults to the embedded demo set. Photos: e.g. 20 or
200 4000x3000 JPEGs (12 MP) in a flat folder; a folder with ImageNet's file count: many links to
one small JPEG.
"""

import argparse
import resource

import common  # noqa: F401  (puts the repo root on sys.path)

from configs import demo
from simclr_jax import stages
from simclr_jax.data import input as data_input


def main(argv: list[str] | None = None) -> float:
  parser = argparse.ArgumentParser()
  parser.add_argument('folder', nargs='?', default='')
  parser.add_argument('--no_cache', action='store_true')
  parser.add_argument('--batches', type=int, default=0, help='0: three epochs')
  args = parser.parse_args(argv)
  config = demo.get_config()
  if args.folder:
    config.data.dataset, config.data.folder = 'folder', args.folder
  config.data.cache = not args.no_cache
  config.train.global_batch_size = 16
  data = data_input.make_train_data(config, stages.get('pretrain'), None)
  batches = data.batches(0)
  steps = args.batches or 3 * max(1, data.num_examples // 16)
  for _ in range(steps):
    next(batches)
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f'{args.folder or "demo"}: {data.num_examples} images, {steps} batches of 16, '
        f'cache {config.data.cache}, peak RSS {peak_mb:.0f} MB')
  return peak_mb


if __name__ == '__main__':
  main()
