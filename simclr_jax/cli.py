"""What the command lines share: the --config flag, parsed with one-line errors.

`app.run(main, flags_parser=cli.parse_flags)` turns a missing config file, an override of a
field that does not exist or a value of the wrong type into `error: ...` (exit 1) instead of a
traceback. The repository root of the config file goes on `sys.path` first, so
`configs/r152_3x.py` (which imports `configs.default`) loads from any directory.
"""

import os
import sys

from absl import flags

_CONFIG_PREFIX = '--config='


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


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with user mistakes reported in one line (exit 1)."""
  path = _config_path(argv)
  if path is not None:
    if not os.path.isfile(path):
      sys.exit(f'error: --config={path}: no such file; pass a config file such as '
               'configs/demo.py (paths are relative to the current directory)')
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:
      sys.path.insert(0, root)
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    lines = [line for line in str(error).splitlines() if line.strip()]
    if 'Traceback' in str(error):  # The config file itself raised: its last line says why.
      sys.exit(f'error: {lines[-1].split(": ", 1)[-1]}')
    sys.exit(f'error: {lines[0]}')
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    unknown = _unknown_override(argv) if path else None
    if unknown:
      sys.exit(f'error: {unknown}: no such config field; see docs/CONFIG.md for every field')
    message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    sys.exit(f'error: bad command-line flag ({message}); see docs/CONFIG.md for every field')
