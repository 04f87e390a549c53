"""Peak host memory of the pretraining input pipeline on an image folder (demo data settings).

    python benchmarks/input_memory.py [FOLDER]     # default: the embedded demo set

Runs `data.input.make_train_data` (pretrain) with configs/demo.py's data settings (32 px, cache
allowed) and a host batch of 16 for three epochs, then prints the process's peak RSS
(ru_maxrss). Photos: e.g. 20 or 200 4000x3000 JPEGs (12 MP) in a flat folder.
"""

import resource
import sys

import common  # noqa: F401  (puts the repo root on sys.path)

from configs import demo
from simclr_jax import stages
from simclr_jax.data import input as data_input


def main(argv: list[str]) -> float:
  config = demo.get_config()
  if argv:
    config.data.dataset, config.data.folder = 'folder', argv[0]
  config.train.global_batch_size = 16
  data = data_input.make_train_data(config, stages.get('pretrain'), None)
  batches = data.batches(0)
  steps = 3 * max(1, data.num_examples // 16)
  for _ in range(steps):
    next(batches)
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f'{argv[0] if argv else "demo"}: {data.num_examples} images, {steps} batches of 16, '
        f'peak RSS {peak_mb:.0f} MB')
  return peak_mb


if __name__ == '__main__':
  main(sys.argv[1:])
