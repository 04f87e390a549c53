"""The package's structure: import-linter's contracts (pyproject.toml) and one home per stage."""

import os
import re
import shutil
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'simclr_jax')


def test_import_layers_and_no_cycles():
  """`lint-imports`: the layer order, data/'s layers and no import cycle in any package."""
  lint = shutil.which('lint-imports')
  assert lint, "lint-imports is missing; install the test extras: pip install -e '.[test]'"
  result = subprocess.run([lint, '--no-cache'], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
  assert re.search(r'Contracts: 4 kept, 0 broken', result.stdout), result.stdout[-2000:]


def test_ruff_finds_no_unused_or_undefined_names_and_no_long_lines():
  """`ruff check` with the rules of pyproject.toml ([tool.ruff.lint]) over the whole repository."""
  ruff = shutil.which('ruff')
  assert ruff, "ruff is missing; install the test extras: pip install -e '.[test]'"
  result = subprocess.run([ruff, 'check', '--no-cache', '--output-format=concise', '.'], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_only_the_stage_registry_compares_stage_names():
  pattern = re.compile(r'stage(\.name)?\s*(==|!=|in\s*\(|not\s+in\s*\()')
  offenders = []
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      path = os.path.join(root, name)
      if not name.endswith('.py') or path == os.path.join(PACKAGE, 'stages.py'):
        continue
      with open(path) as f:
        for number, line in enumerate(f, 1):
          if pattern.search(line):
            offenders.append(f'{os.path.relpath(path, REPO)}:{number}: {line.strip()}')
  assert not offenders, '\n'.join(offenders)
