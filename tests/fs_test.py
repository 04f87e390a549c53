"""simclr_jax/fs.py: the one filesystem seam, on a local disk (tests/gcs_test.py: on a bucket).

The first test keeps the seam the only one: it parses every module of the package and fails on
a call that touches a file by path (`open`, `os.path.exists`, `os.listdir`, `shutil.*`,
`tf.io.gfile.*`, `epath.Path`, `np.load`, `Image.open`, ...) outside fs.py, unless its line
says `# local:` and why (a kernel file, a device file, the config module).
"""

import ast
import multiprocessing
import os
import pathlib

import pytest

from simclr_jax import fs

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'simclr_jax'

_OS_PATH = {'exists', 'lexists', 'isdir', 'isfile', 'islink', 'getsize', 'getmtime', 'abspath',
            'realpath', 'normpath', 'expanduser'}
_OS = {'listdir', 'makedirs', 'mkdir', 'remove', 'unlink', 'rename', 'replace', 'stat', 'walk',
       'scandir', 'open', 'fdopen', 'rmdir', 'chmod'}


def _dotted(node: ast.AST) -> str:
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if isinstance(node, ast.Name):
    parts.append(node.id)
  return '.'.join(reversed(parts))


def _touches_a_path(call: ast.Call) -> bool:
  name = _dotted(call.func)
  head, _, last = name.rpartition('.')
  return (name == 'open' or (head == 'os.path' and last in _OS_PATH)
          or (head == 'os' and last in _OS) or name.startswith(('shutil.', 'glob.', 'epath.'))
          or '.gfile.' in name or (name in _BY_PATH_OR_FILE and not _a_file_object(call)))


# These take a path or a file object: given an open file (`file`, `buffer`, `io.BytesIO(..)`)
# they touch no path.
_BY_PATH_OR_FILE = ('np.load', 'np.save', 'np.savez', 'Image.open')


def _a_file_object(call: ast.Call) -> bool:
  first = call.args[0] if call.args else None
  return isinstance(first, ast.Call) or (isinstance(first, ast.Name) and
                                         first.id in ('file', 'buffer'))


def test_no_user_path_is_touched_outside_the_seam():
  offenders = []
  for path in sorted(PACKAGE.rglob('*.py')):
    if path.name == 'fs.py':
      continue
    source = path.read_text()
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, ast.Call) and _touches_a_path(node):
        if '# local:' not in lines[node.lineno - 1]:
          offenders.append(f'{path.relative_to(PACKAGE)}:{node.lineno}: {lines[node.lineno - 1]}')
  assert not offenders, 'Use simclr_jax.fs (or mark a non-user path "# local: why"):\n' + '\n'.join(
    offenders)


def test_the_seam_check_catches_what_it_should():
  """The rule above fails on each kind of call it names (else it could pass vacuously)."""
  for code in ('open(p)', 'os.path.isdir(p)', 'os.listdir(p)', 'shutil.rmtree(p)',
               'tf.io.gfile.exists(p)', 'epath.Path(p)', 'np.load(path)', 'Image.open(path)',
               'os.makedirs(p)', 'os.path.abspath(p)'):
    assert _touches_a_path(ast.parse(code).body[0].value), code
  for code in ('fs.open(p)', 'os.path.join(a, b)', 'os.getpid()', 'json.load(f)',
               'np.load(io.BytesIO(data))', 'Image.open(file)'):
    assert not _touches_a_path(ast.parse(code).body[0].value), code


def test_local_paths(tmp_path):
  root = str(tmp_path / 'a')
  fs.makedirs(fs.join(root, 'sub', 'deeper'))
  fs.write_text(fs.join(root, 'x.txt'), 'hi')
  fs.write_bytes(fs.join(root, 'y.png'), b'\x89PNG')
  os.symlink(fs.join(root, 'gone.png'), fs.join(root, 'broken.png'))  # Neither file nor folder.
  assert fs.scan(root) == (['sub'], ['x.txt', 'y.png'])
  assert fs.listdir(root) == ['sub', 'x.txt', 'y.png']
  os.remove(fs.join(root, 'broken.png'))
  assert fs.isdir(root) and fs.isfile(fs.join(root, 'x.txt')) and not fs.isfile(root)
  assert fs.read_text(fs.join(root, 'x.txt')) == 'hi'
  assert fs.size_and_mtime(fs.join(root, 'y.png'))[0] == 4
  fs.append_text(fs.join(root, 'x.txt'), ' there')
  assert fs.read_text(fs.join(root, 'x.txt')) == 'hi there'
  fs.rename(fs.join(root, 'sub'), fs.join(root, 'moved'))
  assert fs.scan(root)[0] == ['moved']
  assert [folder for folder, _, _ in fs.walk(root)][:2] == [root, fs.join(root, 'moved')]
  fs.rmtree(fs.join(root, 'moved'))
  assert fs.scan(root)[0] == []
  assert fs.free_bytes(root) > 0
  assert fs.absolute('rel') == os.path.abspath('rel')


def test_url_paths_are_strings_not_local_paths():
  """What os.path would get wrong: abspath prefixes the cwd, normpath eats a slash."""
  assert fs.absolute('gs://bkt/run') == 'gs://bkt/run'
  assert fs.join('gs://bkt/run', 'pretrain', 'checkpoints') == 'gs://bkt/run/pretrain/checkpoints'
  assert fs.parent('gs://bkt/run/pretrain/') == 'gs://bkt/run'
  assert fs.name('gs://bkt/run/pretrain/') == 'pretrain'
  assert fs.bucket('gs://bkt/run/pretrain') == 'bkt'
  assert fs.is_remote('gs://bkt') and not fs.is_remote('/tmp/gs:')
  with pytest.raises(ValueError, match='cannot be appended'):
    fs.append_text('gs://bkt/run/metrics.jsonl', 'x')


def _create(args):
  path, text = args
  return fs.create_new(path, text)[0]


def test_create_new_is_atomic_across_processes(tmp_path):
  """Of 8 processes creating one file at once, exactly one succeeds; its text is the file's."""
  path = str(tmp_path / '.lock')
  with multiprocessing.get_context('spawn').Pool(8) as pool:
    won = pool.map(_create, [(path, f'process {i}') for i in range(8)])
  assert sum(won) == 1
  assert fs.read_text(path) == f'process {won.index(True)}'
  assert fs.create_new(path, 'late') == (False, f'process {won.index(True)}')
  assert not fs.remove_if_unchanged(path, 'someone else')
  assert fs.remove_if_unchanged(path, f'process {won.index(True)}')
  assert not fs.exists(path)


def test_check_writable_names_the_flag_and_reason(tmp_path):
  fs.check_writable(str(tmp_path / 'new'))  # Created.
  assert fs.listdir(str(tmp_path / 'new')) == []  # The probe is gone.
  blocker = tmp_path / 'a_file'
  blocker.write_text('')  # A folder cannot be made inside a file, even by root.
  with pytest.raises(fs.PathError, match=r'^--workdir=.*a_file/run is not writable'):
    fs.check_writable(str(blocker / 'run'))
