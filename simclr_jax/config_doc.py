"""Writes docs/CONFIG.md, the config reference, from the comments in configs/default.py.

    python -m simclr_jax.config_doc > docs/CONFIG.md

Every field is declared once in configs/default.py with a one-line comment; this turns those
lines into one table per section. tests/config_doc_test.py keeps docs/CONFIG.md in sync.
"""

import ast
import pathlib
import re

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parent.parent / 'configs' / 'default.py'
_FIELD = re.compile(
  r'^\s+(?P<target>[a-z_]+(?:\.[a-z_]+)+)\s*=\s*(?P<value>.*?)\s+#\s*(?P<doc>.*)$')
_SECTION = re.compile(r'^\s+# ---- (?P<title>.+?) -+$')
_ALIASES = {'data': 'data', 'model': 'model', 'optim': 'optim', 'train': 'train', 'knn': 'knn',
            'finetune': 'finetune', 'supervised': 'supervised', 'distill': 'distill',
            'distributed': 'distributed', 'config': ''}


def _default_text(value: str) -> str:
  if value.startswith('config_dict.placeholder'):
    return 'None'
  try:
    return repr(ast.literal_eval(value))
  except (ValueError, SyntaxError):
    return value.rstrip(',')


def render(source: str) -> str:
  lines = ['# Configuration reference', '',
           'Generated from the comments in `configs/default.py` by '
           '`python -m simclr_jax.config_doc > docs/CONFIG.md`; do not edit by hand.',
           'Override any field on the command line: `--config.train.global_batch_size=256`.', '',
           '## Run', '', '| field | default | meaning |', '|---|---|---|']
  for line in source.splitlines():
    section = _SECTION.match(line)
    if section:
      lines += ['', f'## {section.group("title")}', '', '| field | default | meaning |',
                '|---|---|---|']
      continue
    field = _FIELD.match(line)
    if not field or 'ConfigDict()' in field.group('value'):
      continue
    owner, _, name = field.group('target').partition('.')
    prefix = _ALIASES.get(owner, owner)
    full_name = f'{prefix}.{name}' if prefix else name
    value = _default_text(field.group('value'))
    doc = field.group('doc').replace('|', '\\|')
    lines.append(f'| `{full_name}` | `{value}` | {doc} |')
  return '\n'.join(lines).replace('\n\n\n', '\n\n') + '\n'


def main() -> None:
  print(render(DEFAULT_CONFIG.read_text()), end='')


if __name__ == '__main__':
  main()
