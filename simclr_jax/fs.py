"""The one way the package touches a path a user gives: a local disk and gs:// alike.

Workdirs, checkpoints' neighbours, `init_from`, image folders and every command's inputs and
outputs go through these functions (tests/fs_test.py fails on an `open`, `os.path.exists`,
`shutil`, ... elsewhere). They are etils `epath`, chosen over calling `tf.io.gfile` directly
because
- orbax keeps its own files with epath: checkpoints and everything beside them take one road;
- a local path is plain `os` (no TensorFlow import for a local workdir: the CLIs that read one,
  and the device-resident data path, stay TensorFlow-free);
- on gs:// epath is `tf.io.gfile`, the client tf.data already uses for tfds shards and image
  files: one set of credentials and one retry policy for every byte of a run.

Two things no file API gives an object store are written here: `create_new` (atomic
create-if-absent: a generation precondition, `ifGenerationMatch=0`, through tensorstore's
kvstore, which orbax brings) and `PathError`, the one-line form of a remote failure (bucket
missing, no permission, object missing).
"""

import builtins
import contextlib
import os
import posixpath
import shutil
from typing import IO, Iterator

from etils import epath

from simclr_jax.errors import ConfigError

REMOTE_PREFIX = 'gs://'


class PathError(ConfigError):
  """A path that cannot be read or written; the message names it and what to do."""


def is_remote(path: str) -> bool:
  return '://' in str(path)


def join(path: str, *parts: str) -> str:
  path = str(path)
  return posixpath.join(path, *parts) if is_remote(path) else os.path.join(path, *parts)


def absolute(path: str) -> str:
  """A local path made absolute; a URL unchanged (os.path.abspath would prefix the cwd)."""
  return str(path) if is_remote(path) else os.path.abspath(path)


def name(path: str) -> str:
  """The last component (`gs://b/run/pretrain/` -> `pretrain`)."""
  return posixpath.basename(str(path).rstrip('/'))


def parent(path: str) -> str:
  return posixpath.dirname(str(path).rstrip('/')) if is_remote(path) else os.path.dirname(path)


def bucket(path: str) -> str:
  """'gs://bkt/a/b' -> 'bkt'."""
  return str(path).split('://', 1)[1].split('/', 1)[0]


@contextlib.contextmanager
def _one_line(path: str, action: str) -> Iterator[None]:
  """Turns a remote client's multi-line error into a PathError naming the path and the fix."""
  if not is_remote(path):
    yield
    return
  import tensorflow as tf  # Loaded already: epath reads gs:// with tf.io.gfile.

  try:
    yield
  except PathError:
    raise
  except tf.errors.PermissionDeniedError:
    raise PathError(
      f'{path}: permission denied while {action}; give this machine\'s service account access '
      f'to bucket gs://{bucket(path)} (roles/storage.objectAdmin), or use another path') from None
  except tf.errors.UnauthenticatedError:
    raise PathError(
      f'{path}: no credentials while {action}; run `gcloud auth application-default login` or '
      'run on a VM with a service account') from None
  except (tf.errors.NotFoundError, FileNotFoundError) as error:
    if not _bucket_exists(path):
      raise PathError(
        f'{path}: bucket gs://{bucket(path)} does not exist; create it (gcloud storage buckets '
        'create) or fix the path') from None
    raise FileNotFoundError(f'{path} does not exist ({action})') from error
  except tf.errors.OpError as error:
    first = str(error.message).strip().splitlines()[0] if error.message else type(error).__name__
    raise PathError(f'{path}: {type(error).__name__} while {action} ({first})') from None


def _bucket_exists(path: str) -> bool:
  import tensorflow as tf

  try:
    return tf.io.gfile.exists(f'{REMOTE_PREFIX}{bucket(path)}')
  except tf.errors.OpError:
    return False


def exists(path: str) -> bool:
  with _one_line(path, 'checking that it exists'):
    return epath.Path(path).exists()


def isdir(path: str) -> bool:
  with _one_line(path, 'checking that it is a folder'):
    return epath.Path(path).is_dir()


def isfile(path: str) -> bool:
  with _one_line(path, 'checking that it is a file'):
    return epath.Path(path).is_file()


def scan(path: str) -> tuple[list[str], list[str]]:
  """(sorted subfolder names, sorted file names) of a folder, one listing call.

  Locally `os.scandir` (no stat per entry); on gs:// one prefix listing, in which subfolders end
  in '/' (a stat per entry would be one request per object: 1.28 M for ImageNet).
  """
  with _one_line(path, 'listing it'):
    if not is_remote(path):
      with os.scandir(path) as entries:  # Links followed; a broken link is neither.
        entries = [(entry.name, entry.is_dir(), entry.is_file()) for entry in entries]
      return (sorted(n for n, is_dir, _ in entries if is_dir),
              sorted(n for n, _, is_file in entries if is_file))
    import tensorflow as tf

    names = tf.io.gfile.listdir(path)
    return (sorted(n.rstrip('/') for n in names if n.endswith('/')),
            sorted(n for n in names if not n.endswith('/')))


def listdir(path: str) -> list[str]:
  folders, files = scan(path)
  return sorted(folders + files)


def walk(path: str) -> Iterator[tuple[str, list[str], list[str]]]:
  """(folder, subfolder names, file names) top-down, lazily (stop early: no full listing)."""
  with _one_line(path, 'listing it'):
    for folder, subfolders, files in epath.Path(path).walk():
      yield str(folder), list(subfolders), list(files)


def makedirs(path: str) -> None:
  with _one_line(path, 'creating it'):
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def remove(path: str) -> None:
  with _one_line(path, 'deleting it'):
    epath.Path(path).unlink()


def rmtree(path: str) -> None:
  with _one_line(path, 'deleting it'):
    if is_remote(path):
      epath.Path(path).rmtree()
    else:
      shutil.rmtree(path)


def rename(source: str, target: str) -> None:
  """Moves a file or folder (on gs:// object by object, each a copy then a delete: not atomic;
  TensorFlow's rename of a gs:// folder fails where no object names the folder itself)."""
  with _one_line(source, f'moving it to {target}'):
    if not (is_remote(source) and isdir(source)):
      epath.Path(source).rename(target)
      return
    import tensorflow as tf

    for folder, _, files in tf.io.gfile.walk(source):
      relative = folder[len(source.rstrip('/')):].lstrip('/')
      for name in files:
        tf.io.gfile.rename(join(folder, name), join(target, relative, name), overwrite=True)


def replace(source: str, target: str) -> None:
  """Moves a file over `target` (atomic on a local disk; on gs:// a copy and a delete)."""
  with _one_line(source, f'moving it to {target}'):
    epath.Path(source).replace(target)


def open(path: str, mode: str = 'r') -> IO:  # noqa: A001 - the file API's own name.
  """A file object (use it in `with`); local files are Python's own (no wrapper per call:
  the image check opens 1.28 M of them for ImageNet)."""
  if not is_remote(path):
    return builtins.open(path, mode)
  with _one_line(path, 'opening it'):
    return epath.Path(path).open(mode)


def read_text(path: str) -> str:
  with _one_line(path, 'reading it'):
    return epath.Path(path).read_text()


def read_bytes(path: str) -> bytes:
  with _one_line(path, 'reading it'):
    return epath.Path(path).read_bytes()


def write_text(path: str, text: str) -> None:
  """Writes a whole file (a gs:// object appears complete or not at all)."""
  with _one_line(path, 'writing it'):
    epath.Path(path).write_text(text)


def write_bytes(path: str, data: bytes) -> None:
  with _one_line(path, 'writing it'):
    epath.Path(path).write_bytes(data)


def append_text(path: str, text: str) -> None:
  """Appends to a local file; object stores cannot append (see workdir.append_metrics)."""
  if is_remote(path):
    raise ValueError(f'{path}: objects cannot be appended to; write a new object instead')
  with epath.Path(path).open('a') as file:
    file.write(text)


def size_and_mtime(path: str) -> tuple[int, int]:
  """(bytes, modification time in ns) of a file."""
  if not is_remote(path):
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns
  with _one_line(path, 'reading its size'):
    import tensorflow as tf

    stat = tf.io.gfile.stat(path)
    return int(stat.length), int(stat.mtime_nsec)


def free_bytes(path: str) -> int | None:
  """Free space where `path` lives; None on an object store (no such limit)."""
  return None if is_remote(path) else shutil.disk_usage(path).free


def create_new(path: str, text: str) -> tuple[bool, str]:
  """Writes `text` to `path` only if nothing is there, atomically: (created, the text there now:
  ours if created, the holder's if not, '' if it vanished meanwhile).

  A local disk: O_CREAT | O_EXCL. gs://: an upload with the generation precondition
  `ifGenerationMatch=0` (tensorstore's kvstore `if_equal` with the no-value generation), which
  Cloud Storage applies atomically: of two concurrent creators exactly one succeeds. The holder's
  text is read through the same client (no cached metadata of another client in between).
  """
  if not is_remote(path):
    try:
      descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        return False, read_text(path)
      except FileNotFoundError:
        return False, ''
    with os.fdopen(descriptor, 'w') as file:
      file.write(text)
    return True, text
  store, key = _kvstore(path)
  try:
    current = store.read(key).result()
    if current.state == 'missing':
      # `current.stamp.generation` is now the no-value generation: the write is create-only.
      if store.write(key, text.encode(), if_equal=current.stamp.generation).result().generation:
        return True, text
      current = store.read(key).result()  # Someone else created it first.
  except ValueError as error:
    raise PathError(f'{path}: cannot create it ({str(error).splitlines()[0]}); check that the '
                    f'bucket gs://{bucket(path)} exists and is writable') from None
  return False, current.value.decode(errors='replace') if current.state == 'value' else ''


def remove_if_unchanged(path: str, text: str) -> bool:
  """Deletes `path` if it still holds `text` (atomic on gs://: a generation precondition)."""
  if not is_remote(path):
    with contextlib.suppress(FileNotFoundError):
      if read_text(path) == text:
        os.remove(path)
        return True
    return False
  store, key = _kvstore(path)
  current = store.read(key).result()
  if current.state != 'value' or current.value.decode() != text:
    return False
  return bool(store.write(key, None, if_equal=current.stamp.generation).result().generation)


def _kvstore(path: str):
  import tensorstore as ts  # orbax's dependency; only needed on an object store.

  bucket_name, _, key = str(path).split('://', 1)[1].partition('/')
  store = ts.KvStore.open({'driver': 'gcs', 'bucket': bucket_name}).result()
  return store, key


def check_writable(directory: str, flag: str = '--workdir') -> None:
  """Fails in one line when `directory` cannot be written: a probe file is written and deleted
  (on gs://: a missing bucket, no permission, no credentials are each named)."""
  if is_remote(directory) and not _bucket_exists(directory):
    raise PathError(
      f'{flag}={directory}: bucket gs://{bucket(directory)} does not exist (or this machine '
      f'cannot see it); create it (gcloud storage buckets create gs://{bucket(directory)}) or '
      f'fix {flag}')
  probe = join(directory, f'.write_test_{os.getpid()}')
  try:
    makedirs(directory)
    write_text(probe, 'ok')
    remove(probe)
  except PathError as error:
    raise PathError(f'{flag}={directory} is not writable: {error}') from None
  except OSError as error:
    raise PathError(f'{flag}={directory} is not writable ({error.strerror or error}); pass '
                    f'{flag}=A_WRITABLE_DIR') from None


if __name__ == '__main__':  # launch/tpu_vm.sh: `python -m simclr_jax.fs --check-writable=URL`.
  import sys

  arguments = sys.argv[1:]
  if len(arguments) != 1 or not arguments[0].startswith('--check-writable='):
    sys.exit('usage: python -m simclr_jax.fs --check-writable=PATH')
  try:
    check_writable(arguments[0].split('=', 1)[1])
  except PathError as error:
    sys.exit(f'error: {error}')
