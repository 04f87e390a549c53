"""A fake ImageNet in tfds format, written locally: real JPEGs, 1,000 classes, many shard files.

    python tests/fake_imagenet.py DATA_DIR [--train=N] [--shards=S]

writes DATA_DIR/fake_imagenet/1.0.0/ (tfrecord shards + dataset_info.json) as `tfds build` would
for imagenet2012: features {'image': JPEG, 'label': ClassLabel(1000), 'file_name'}, splits
'train' and 'validation'. Images are photos of smooth noise at ImageNet-like sizes (shorter side
~300-500 px, aspect 3/4-4/3, quality 90: ~40-120 KB each), drawn from a fixed seed, so the
files are the same on every machine. Readers open it by name with
`tfds.builder('fake_imagenet', data_dir=DATA_DIR)` (no registration needed once written).
"""

import argparse
import functools
import io
import os

import numpy as np

NAME = 'fake_imagenet'
NUM_CLASSES = 1000


def _jpeg(rng: np.random.Generator) -> bytes:
  from PIL import Image

  short = int(rng.integers(300, 501))
  aspect = rng.uniform(3 / 4, 4 / 3)
  height, width = (short, int(short * aspect)) if aspect > 1 else (int(short / aspect), short)
  # Smooth noise (low-resolution noise, upsampled) compresses like a photo, not like static.
  small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
  image = Image.fromarray(small).resize((width, height), Image.BICUBIC)
  buffer = io.BytesIO()
  image.save(buffer, format='JPEG', quality=90)
  return buffer.getvalue()


@functools.cache  # tfds registers a builder class by name, once per process.
def _builder_class():
  import tensorflow_datasets as tfds

  class FakeImagenet(tfds.core.GeneratorBasedBuilder):
    """imagenet2012's features, generated."""

    VERSION = tfds.core.Version('1.0.0')
    num_train = 0
    num_validation = 0

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(encoding_format='jpeg'),
          'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
          'file_name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples('train', self.num_train),
              'validation': self._generate_examples('validation', self.num_validation)}

    def _generate_examples(self, split, count):
      rng = np.random.default_rng([ord(split[0]), count])
      for i in range(count):
        key = f'{split}_{i:08d}'
        yield key, {'image': _jpeg(rng), 'label': int(rng.integers(NUM_CLASSES)),
                    'file_name': f'{key}.JPEG'}

  return FakeImagenet


def write(data_dir: str, num_train: int = 320, num_validation: int = 64, shards: int = 16,
          file_format: str = 'tfrecord') -> str:
  """Writes the dataset (once: an existing copy is reused) and returns its directory."""
  import tensorflow_datasets as tfds

  cls = _builder_class()
  cls.num_train, cls.num_validation = num_train, num_validation
  builder = cls(data_dir=data_dir, file_format=file_format)
  if not os.path.exists(os.path.join(builder.data_dir, 'dataset_info.json')):
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=shards),
    )
  return builder.data_dir


def shard_files(data_dir: str, split: str = 'train') -> list[str]:
  folder = os.path.join(data_dir, NAME, '1.0.0')
  return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f'-{split}.' in f)


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('data_dir')
  parser.add_argument('--train', type=int, default=320)
  parser.add_argument('--validation', type=int, default=64)
  parser.add_argument('--shards', type=int, default=16)
  args = parser.parse_args()
  print(write(args.data_dir, args.train, args.validation, args.shards))
