"""What the command lines share: the --config flag parsed with one-line errors, a quiet start.

`run(define_flags, main)` declares a command's flags and parses them with `parse_flags`, which
turns a missing config file, an override of a field that does not exist or a value of the wrong
type into `error: ...` (exit 1) instead of a traceback. The repository root of the config file
goes on `sys.path` first, so `configs/r152_3x.py` (which imports `configs.default`) loads from
any directory.
"""

import contextlib
import glob
import os
import sys
import tempfile

from absl import app, flags

_CONFIG_PREFIX = '--config='


def run(define_flags, main, argv: list[str] | None = None) -> None:
  """Every command line runs so: `if __name__ == '__main__': cli.run(_define_flags, main)`.

  The flags are declared only when the module runs as a program (`define_flags()` returns their
  holders), so importing a command as a library never adds a --config flag that another
  command's would clash with; `main(argv, flag_values)` reads them; parsing goes through
  `parse_flags` (one-line errors).
  """
  flag_values = define_flags()
  app.run(lambda args: main(args, flag_values), argv=argv, flags_parser=parse_flags)



def _config_path(argv: list[str]) -> str | None:
  for index, arg in enumerate(argv):
    if arg.startswith(_CONFIG_PREFIX):
      return arg[len(_CONFIG_PREFIX):].split(':', 1)[0]
    if arg == '--config' and index + 1 < len(argv):
      return argv[index + 1].split(':', 1)[0]
  return None


def _unknown_override(argv: list[str]) -> str | None:
  """The first --config.a.b=... whose field is not declared in configs/default.py."""
  from configs import default  # The config file's own repository: put on sys.path above.

  config = default.get_config()
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    node = config
    for part in arg[len('--config.'):].split('=', 1)[0].split('.'):
      if not hasattr(node, 'keys') or part not in node:
        return arg.split('=', 1)[0]
      node = node[part]
  return None


def verbose() -> bool:
  """SIMCLR_VERBOSE=1: user mistakes raise with their traceback instead of one line."""
  return os.environ.get('SIMCLR_VERBOSE', '') not in ('', '0')


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with user mistakes reported in one line (exit 1; SIMCLR_VERBOSE=1 for
  the traceback)."""
  path = _config_path(argv)
  if path is not None:
    if not os.path.isfile(path):  # local: a config is a Python module, imported from disk.
      sys.exit(f'error: --config={path}: no such file; pass a config file such as '
               'configs/demo.py (paths are relative to the current directory)')
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))  # local: as above.
    if root not in sys.path:
      sys.path.insert(0, root)
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
    if verbose():
      raise
    sys.exit(_bad_flags_message(error, argv, path))


def _bad_flags_message(error: Exception, argv: list[str], path: str | None) -> str:
  if isinstance(error, flags.Error):
    lines = [line for line in str(error).splitlines() if line.strip()]
    if 'Traceback' in str(error):  # The config file itself raised: its last line says why.
      return f'error: {lines[-1].split(": ", 1)[-1]}'
    return f'error: {lines[0]}'
  unknown = _unknown_override(argv) if path else None
  if unknown:
    return f'error: {unknown}: no such config field; see docs/CONFIG.md for every field'
  message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
  return f'error: bad command-line flag ({message}); see docs/CONFIG.md for every field'


@contextlib.contextmanager
def native_stderr_to(path: str):
  """Sends what C++ code writes to file descriptor 2 into `path` while the block runs."""
  sys.stderr.flush()
  saved = os.dup(2)
  with open(path, 'w') as sink:  # local: a temporary log of this process.
    os.dup2(sink.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def has_tpu_chips() -> bool:
  """TPU chips on this machine (their device files: /dev/accel* on v2-v3, /dev/vfio on v4+)."""
  return bool(glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'))  # local: devices.


def start_jax() -> list:
  """`jax.devices()`, started quietly on a machine without TPU chips.

  libtpu comes with the test and tpu extras (the plan compiles for TPUs on any machine); where
  there is no TPU its start-up prints a dozen lines about the TPU VM it is not on before JAX
  falls back to CPU or GPU. Those lines are dropped; any other start-up output is kept.
  """
  import jax  # Deferred: importing cli (flag parsing) must not start JAX.

  if has_tpu_chips() or os.environ.get('JAX_PLATFORMS'):
    return jax.devices()
  with tempfile.NamedTemporaryFile('r', suffix='.log') as log:
    with native_stderr_to(log.name):
      devices = jax.devices()
    text = log.read()
  if devices[0].platform != 'cpu' or 'TPU' not in text:
    sys.stderr.write(text)
  return devices
