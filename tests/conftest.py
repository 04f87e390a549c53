"""Test setup: 8 fake CPU devices, set before JAX is imported anywhere."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
_flags = os.environ.get('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in _flags:
  _flags += ' --xla_force_host_platform_device_count=8'
# The suite is dominated by compiling many small programs: skipping LLVM's backend optimisation
# makes that about 3x faster on CPU, and every numerical comparison still holds.
if '--xla_backend_optimization_level' not in _flags:
  _flags += ' --xla_backend_optimization_level=0'
os.environ['XLA_FLAGS'] = _flags.strip()
# Keep TensorFlow off any accelerator and quiet; the tests only use it for tf.data on CPU.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
# As simclr_jax/__init__.py sets it, for test modules that import TensorFlow before the package.
os.environ.setdefault('GCS_STAT_CACHE_MAX_AGE', '0')

# torchvision imports torch._dynamo, which imports triton (shipped with the Linux torch wheel); its
# shared library segfaults at import when TensorFlow's was loaded first, as it is here by the
# time tests/torch_export_test.py runs (`import tensorflow; import triton` crashes, the other
# order works). The tests run on the CPU and never need triton: torch is told it is absent.
import sys  # noqa: E402

sys.modules.setdefault('triton', None)

import pytest  # noqa: E402 - after the environment above.


@pytest.fixture(scope='module')
def emulator(tmp_path_factory):
  import gcs_emulator  # The emulated bucket of gcs_test.py and gcs_seam_test.py.

  emu = gcs_emulator.Emulator(tmp_path_factory.mktemp('gcs'))
  emu.create_bucket('bkt')
  env = emu.env()
  saved = {name: os.environ.get(name) for name in env}
  os.environ.update(env)  # This process and every child it starts use the emulator.
  yield emu
  for name, value in saved.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value
  emu.stop()
