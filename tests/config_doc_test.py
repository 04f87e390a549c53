"""docs/CONFIG.md is generated from configs/default.py and documents every field."""

import pathlib

from flax import traverse_util

from configs import default as default_lib
from simclr_jax import config_doc

DOC = pathlib.Path(__file__).resolve().parent.parent / 'docs' / 'CONFIG.md'


def test_config_reference_is_in_sync():
  expected = config_doc.render(config_doc.DEFAULT_CONFIG.read_text())
  assert DOC.read_text() == expected, (
    'docs/CONFIG.md is stale: run `python -m simclr_jax.config_doc > docs/CONFIG.md`')


def test_every_field_is_documented_with_its_default():
  text = DOC.read_text()
  flat = traverse_util.flatten_dict(default_lib.get_config().to_dict(), sep='.')
  assert len(flat) > 80
  for name, value in flat.items():
    row = next((line for line in text.splitlines() if line.startswith(f'| `{name}` |')), None)
    assert row is not None, f'{name} has no row in docs/CONFIG.md'
    if value is not None:
      assert repr(value) in row, (name, row)
    assert row.split('|')[3].strip(), f'{name} has no description'


def test_no_imagenet_config_caches_decoded_images():
  """Decoded ImageNet (~0.5 TB) fits in no host's RAM: tf.data's cache would die at epoch end."""
  import glob
  import importlib

  checked = 0
  for path in sorted(glob.glob(str(DOC.parent.parent / 'configs' / '[!_]*.py'))):
    module = importlib.import_module(f'configs.{pathlib.Path(path).stem}')
    variants = ['1pct', '10pct', '1pct_to_r50', '10pct_to_r50'] if 'r152' in path else [None]
    for variant in variants:
      config = module.get_config(variant) if variant else module.get_config()
      if 'imagenet' in config.data.dataset or 'imagenet' in config.finetune.dataset:
        assert not config.data.cache, f'{path}:{variant} caches decoded ImageNet'
        checked += 1
  assert checked >= 5  # r50_1x and the four r152_3x variants.
