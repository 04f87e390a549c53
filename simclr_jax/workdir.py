"""What a workdir holds, its safety checks, and preemption: a clean stop on SIGTERM.

- A stage workdir holds checkpoints/, config.json, metrics.jsonl (one JSON object per logged
  step, appended) and results.json; a run workdir one stage workdir per stage. The readers here
  (`read_results`, `read_metrics`, `find_stage_workdirs`) serve the runner and the plots.

- An unwritable or nearly full workdir is reported before anything is built.
- A workdir that holds a run of a different config is not silently continued: the fields that
  define the run (model, data, optimiser, seed, ...) must match the saved `config.json`.
- One run per workdir: `lock` holds workdir/.lock (host, pid) while a run is going on.
- SIGTERM (the Cloud TPU preemption notice) and Ctrl-C (SIGINT) make the loop save at the
  current step and stop; a second Ctrl-C exits at once.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import threading
import time
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath
from flax import traverse_util
from jax.experimental import multihost_utils

from simclr_jax import stages, validation

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
RESULTS_FILE = 'results.json'
MIN_FREE_BYTES = 256 * 2**20
# Fields that may change between runs in one workdir: schedule length (to extend a run),
# logging/eval/checkpoint cadence, hosts, the state layout, and the stage list.
MAY_CHANGE = (
  'train.train_steps', 'train.train_epochs', 'train.log_every_steps',
  'train.checkpoint_every_steps', 'train.keep_checkpoints', 'train.eval_every_steps',
  'train.eval_batch_size', 'train.eval_at_end', 'train.allow_config_change', 'train.plots_at_end',
  'train.shard_state',  # Checkpoints restore into either layout.
  'data.tfds_data_dir', 'data.folder',  # Where the data lives does not define the run.
  'compilation_cache_dir', 'knn.', 'distributed.',
  'stages', 'name',
)


LOCK_FILE = '.lock'


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's live process.
    return True
  return True


@contextlib.contextmanager
def lock(workdir: str):
  """Holds workdir/.lock while the block runs: a second run on the same workdir is refused.

  The lock file is created atomically (O_EXCL) and names its host and pid; a lock left by a
  process of this host that no longer exists is stale and taken over. Only process 0 locks (the
  other hosts of a pod share its workdir). On gs:// there is no atomic create-if-absent through
  a file API, so nothing is locked there: launch/tpu_vm.sh refuses to start a second job on a
  slice whose workers still run one (its pid file), which covers pods.
  """
  if '://' in workdir or jax.process_index() != 0:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  me = {'host': socket.gethostname(), 'pid': os.getpid(), 'since': time.strftime('%F %T')}
  for _ in range(2):
    try:
      descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        with open(path) as file:
          holder = json.load(file)
      except (OSError, ValueError):
        holder = {}
      pid, host = holder.get('pid'), holder.get('host')
      if host == me['host'] and isinstance(pid, int) and not _alive(pid):
        logging.warning('Removing the stale lock of pid %d (no longer running) in %s.', pid,
                        workdir)
        with contextlib.suppress(FileNotFoundError):
          os.remove(path)
        continue
      raise validation.ConfigError(
        f'workdir {workdir!r} is in use by pid {pid} on {host} (since {holder.get("since")}); '
        f'wait for it or stop it, or use another --workdir (if that process is gone, delete {path})'
      ) from None
    with os.fdopen(descriptor, 'w') as file:
      json.dump(me, file)
    break
  try:
    yield
  finally:
    with contextlib.suppress(OSError, ValueError):
      with open(path) as file:
        if json.load(file).get('pid') == me['pid']:
          os.remove(path)


class Preempted(Exception):
  """Raised after a checkpoint was saved because the job was asked to stop (SIGTERM)."""


def check_writable(workdir: str) -> None:
  """Fails early, in one line, when the workdir cannot hold checkpoints."""
  if '://' in workdir:  # gs:// and other remote paths: orbax/tensorstore checks them.
    return
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test_{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as error:
    raise validation.ConfigError(
      f'workdir {workdir!r} is not writable ({error.strerror}); pass --workdir=A_WRITABLE_DIR'
    ) from None
  free = shutil.disk_usage(workdir).free
  if free < MIN_FREE_BYTES:
    raise validation.ConfigError(
      f'workdir {workdir!r} has only {free / 2**20:.0f} MiB free (need at least '
      f'{MIN_FREE_BYTES / 2**20:.0f} MiB for checkpoints); free space or use another --workdir'
    )


def _defining_fields(config_dict: dict, stage: str | None = None) -> dict:
  flat = traverse_util.flatten_dict(config_dict, sep='.')
  ignored = MAY_CHANGE
  if stage in stages.REGISTRY:  # The sections of other stages this one does not read.
    unused = set(stages.STAGES) - stages.get(stage).sections() - {stage}
    ignored += tuple(f'{section}.' for section in sorted(unused))
  return {k: v for k, v in flat.items() if not any(k.startswith(p) for p in ignored)}


def check_same_run(
  config: ml_collections.ConfigDict, workdir: str, finished: bool = False, stage: str | None = None
) -> None:
  """Refuses a workdir whose saved config differs in a run-defining field (unless allowed).

  `finished`: the workdir holds a completed stage, which would otherwise be silently reused.
  `stage`: the settings of the stages after it (say, distill's for pretrain) do not count.
  """
  path = epath.Path(workdir) / CONFIG_FILE
  current = json.loads(config.to_json_best_effort())
  if path.exists():
    saved = _defining_fields(json.loads(path.read_text()), stage)
    now = _defining_fields(current, stage)
    differing = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if differing and not config.train.allow_config_change:
      shown = ', '.join(f'{k}: {saved.get(k)!r} -> {now.get(k)!r}' for k in differing[:6])
      what, action = ('a finished run', 'reuse it') if finished else ('a run', 'continue it')
      raise validation.ConfigError(
        f'workdir {workdir!r} holds {what} of a different config ({shown}); use a new --workdir '
        f'or pass --config.train.allow_config_change=True to {action} anyway'
      )


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Records the run's config: called when the first step is about to run, so a start that
  failed before (data not found, a wrong split) leaves nothing that a corrected rerun clashes
  with."""
  path = epath.Path(workdir) / CONFIG_FILE
  current = json.loads(config.to_json_best_effort())
  if jax.process_index() == 0:  # Atomic: other hosts may be reading it.
    temporary = epath.Path(str(path) + f'.tmp{os.getpid()}')
    temporary.write_text(json.dumps(current, indent=2))
    temporary.replace(path)


class PreemptionWatcher:
  """Turns SIGTERM and SIGINT into a flag the loop polls; multi-host via JAX's preemption sync
  point. A second SIGINT (Ctrl-C twice) exits at once: the previous checkpoint stays intact."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self._event = threading.Event()
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}

  def _on_signal(self, signum, frame) -> None:
    del frame
    if signum == signal.SIGINT and self._event.is_set():
      print('Second Ctrl-C: exiting now; the newest finished checkpoint is kept.', flush=True)
      os._exit(130)
    name = signal.Signals(signum).name
    logging.warning('Received %s: saving a checkpoint at the next step, then stopping '
                    '(Ctrl-C again to exit at once).', name)
    self._event.set()

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      # Every host must stop at the same step, or the others would wait in a collective
      # forever: JAX's preemption service makes them agree (it also catches SIGTERM).
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # Preemption service not started (no jax.distributed).
        pass
    return self._event.is_set()

  def close(self) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}


# ----------------------------------------------------------------------------- reading a workdir


def read_results(stage_workdir: str) -> dict[str, Any] | None:
  path = epath.Path(stage_workdir) / RESULTS_FILE
  return json.loads(path.read_text()) if path.exists() else None


def append_metrics(stage_workdir: str, record: dict[str, Any]) -> None:
  """One JSON line in metrics.jsonl (process 0 only): easy to read and plot.

  Appended on a local disk. Object stores (gs://) cannot append to an object: there the file is
  read and rewritten whole each time (logs are small: a 100k-step run at log_every_steps=100 is
  ~0.5 MB), which is what a GCS "append" costs in any client.
  """
  if jax.process_index() != 0:
    return
  line = json.dumps({k: (int(v) if k == 'step' else float(v)) for k, v in record.items()})
  if '://' not in stage_workdir:
    with open(os.path.join(stage_workdir, METRICS_FILE), 'a') as f:
      f.write(line + '\n')
    return
  path = epath.Path(stage_workdir) / METRICS_FILE
  previous = path.read_text() if path.exists() else ''
  path.write_text(previous + line + '\n')


def read_metrics(stage_workdir: str) -> list[dict[str, Any]]:
  """The records of metrics.jsonl ([] if absent); an unreadable line (a write cut short by a
  preemption) is skipped and counted in the log."""
  path = epath.Path(stage_workdir) / METRICS_FILE
  if not path.exists():
    return []
  records, bad = [], 0
  for line in filter(str.strip, path.read_text().splitlines()):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      bad += 1
  if bad:
    logging.warning('%s: skipped %d unreadable lines.', path, bad)
  return records


def is_stage_workdir(path: str) -> bool:
  return any((epath.Path(path) / name).exists()
             for name in ('checkpoints', METRICS_FILE, RESULTS_FILE))


def stage_name(stage_workdir: str) -> str:
  """The stage a workdir holds: results.json's `stage`, else the folder name if it is a stage."""
  results = read_results(stage_workdir) or {}
  name = os.path.basename(os.path.normpath(stage_workdir))
  return results.get('stage') or (name if name in stages.REGISTRY else stages.STAGES[0])


def find_stage_workdirs(workdir: str) -> dict[str, str]:
  """{stage: stage workdir}: the workdir itself if it is one, else its stage subfolders, in
  pipeline order (the registry's), then any others."""
  root = epath.Path(workdir)
  if not root.exists():
    raise FileNotFoundError(f'--workdir={workdir} does not exist; pass a run or stage workdir')
  if is_stage_workdir(workdir):
    return {stage_name(workdir): workdir}
  names = sorted(child.name for child in root.iterdir() if child.is_dir())
  found = {name: os.path.join(workdir, name) for name in names
           if is_stage_workdir(os.path.join(workdir, name))}
  order = {stage: rank for rank, stage in enumerate(stages.STAGES)}
  return dict(sorted(found.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))
