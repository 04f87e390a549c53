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
import itertools
import json
import os
import signal
import socket
import threading
import time
from typing import Any

import jax
import ml_collections
from absl import logging
from flax import traverse_util
from jax.experimental import multihost_utils

from simclr_jax import fs, stages, validation

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
  'train.profile_steps', 'train.profile_all_hosts',
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

  The lock file is created atomically (`fs.create_new`: O_EXCL on a disk, a generation
  precondition on gs://) and names its host and pid; a lock left by a process of this host that
  no longer exists is stale and taken over. Only process 0 locks (the other hosts of a pod share
  its workdir).
  """
  if jax.process_index() != 0:
    yield
    return
  fs.makedirs(workdir)
  path = fs.join(workdir, LOCK_FILE)
  me = {'host': socket.gethostname(), 'pid': os.getpid(), 'since': time.strftime('%F %T')}
  mine = json.dumps(me)
  for attempt in range(3):  # A stale or vanishing lock is retried; a live one is not.
    created, held = fs.create_new(path, mine)
    if created:
      break
    try:
      holder = json.loads(held)
    except ValueError:  # Released meanwhile (''), or half-written.
      holder = {}
    pid, host = holder.get('pid'), holder.get('host')
    stale = host == me['host'] and isinstance(pid, int) and not _alive(pid)
    if stale and attempt < 2:
      logging.warning('Removing the stale lock of pid %d (no longer running) in %s.', pid,
                      workdir)
      fs.remove_if_unchanged(path, held)  # Only that lock: a new holder's stays.
    elif held or attempt == 2:
      raise validation.ConfigError(
        f'workdir {workdir!r} is in use by pid {pid} on {host} (since {holder.get("since")}); '
        f'wait for it or stop it, or use another --workdir (if that process is gone, delete '
        f'{path})')
  try:
    yield
  finally:
    with contextlib.suppress(OSError, ValueError):
      fs.remove_if_unchanged(path, mine)


class Preempted(Exception):
  """Raised after a checkpoint was saved because the job was asked to stop (SIGTERM)."""


def check_writable(workdir: str) -> None:
  """Fails early, in one line, when the workdir cannot hold checkpoints (a probe file is written
  and deleted: on gs:// a missing bucket, no permission or no credentials are named)."""
  fs.check_writable(workdir)
  free = fs.free_bytes(workdir)
  if free is not None and free < MIN_FREE_BYTES:
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
  path = fs.join(workdir, CONFIG_FILE)
  current = json.loads(config.to_json_best_effort())
  if fs.exists(path):
    saved = _defining_fields(json.loads(fs.read_text(path)), stage)
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
  path = fs.join(workdir, CONFIG_FILE)
  current = json.loads(config.to_json_best_effort())
  if jax.process_index() == 0:  # Whole: other hosts may be reading it.
    if fs.is_remote(path):  # An object appears complete or not at all.
      fs.write_text(path, json.dumps(current, indent=2))
    else:
      temporary = f'{path}.tmp{os.getpid()}'
      fs.write_text(temporary, json.dumps(current, indent=2))
      fs.replace(temporary, path)


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
  path = fs.join(stage_workdir, RESULTS_FILE)
  return json.loads(fs.read_text(path)) if fs.exists(path) else None


METRICS_PARTS = 'metrics.jsonl.parts'  # gs://: lines not yet merged into metrics.jsonl.
METRICS_FLUSH_S = 120.0  # gs://: pending lines are written as one new part object this often.
_pending: dict[str, list[str]] = {}  # gs:// stage workdir -> lines not yet written.
_last_flush: dict[str, float] = {}
_flushes = itertools.count()


def append_metrics(stage_workdir: str, record: dict[str, Any]) -> None:
  """One JSON line in metrics.jsonl (process 0 only): easy to read and plot.

  Appended on a local disk. An object store cannot append, and rewriting the whole file at every
  log step would cost more the longer the run: on gs:// the lines are kept and written every
  METRICS_FLUSH_S as one new object under metrics.jsonl.parts/ (a constant cost per write);
  `merge_metrics` folds them into metrics.jsonl once per run segment (stage end, preemption or
  error). `read_metrics` reads both, so the readers see one history.
  """
  if jax.process_index() != 0:
    return
  line = json.dumps({k: (int(v) if k == 'step' else float(v)) for k, v in record.items()})
  if not fs.is_remote(stage_workdir):
    fs.append_text(fs.join(stage_workdir, METRICS_FILE), line + '\n')
    return
  _pending.setdefault(stage_workdir, []).append(line)
  now = time.monotonic()
  if now - _last_flush.setdefault(stage_workdir, now) >= METRICS_FLUSH_S:
    flush_metrics(stage_workdir)


def flush_metrics(stage_workdir: str) -> None:
  """gs://: the pending lines as one new object metrics.jsonl.parts/<ms since epoch>-<n>.jsonl
  (also at every checkpoint, so that a killed run's history reaches its newest checkpoint)."""
  lines = _pending.pop(stage_workdir, [])
  _last_flush[stage_workdir] = time.monotonic()
  if lines:
    # Sorts in write order; the count keeps two flushes within one millisecond apart.
    name = f'{time.time_ns() // 10**6:015d}-{next(_flushes):06d}.jsonl'
    fs.write_text(fs.join(stage_workdir, METRICS_PARTS, name), '\n'.join(lines) + '\n')


def merge_metrics(stage_workdir: str) -> None:
  """gs://: pending lines and parts appended to metrics.jsonl (rewritten once), parts deleted.

  Once per run segment, so rewrites grow with the number of resumes, not of log steps.
  """
  if jax.process_index() != 0 or not fs.is_remote(stage_workdir):
    return
  flush_metrics(stage_workdir)
  parts = _metric_parts(stage_workdir)
  if not parts:
    return
  path = fs.join(stage_workdir, METRICS_FILE)
  text = fs.read_text(path) if fs.exists(path) else ''
  fs.write_text(path, text + ''.join(fs.read_text(part) for part in parts))
  for part in parts:
    fs.remove(part)


def _metric_parts(stage_workdir: str) -> list[str]:
  folder = fs.join(stage_workdir, METRICS_PARTS)
  if not fs.is_remote(stage_workdir) or not fs.isdir(folder):
    return []
  return [fs.join(folder, name) for name in fs.scan(folder)[1]]


def read_metrics(stage_workdir: str) -> list[dict[str, Any]]:
  """The records of metrics.jsonl and of any parts not yet merged ([] if none); an unreadable
  line (a write cut short by a preemption) is skipped and counted in the log."""
  path = fs.join(stage_workdir, METRICS_FILE)
  texts = [fs.read_text(path)] if fs.exists(path) else []
  texts += [fs.read_text(part) for part in _metric_parts(stage_workdir)]
  records, bad = [], 0
  for line in filter(str.strip, '\n'.join(texts).splitlines()):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      bad += 1
  if bad:
    logging.warning('%s: skipped %d unreadable lines.', path, bad)
  return records


def is_stage_workdir(path: str) -> bool:
  return any(fs.exists(fs.join(path, name)) for name in ('checkpoints', METRICS_FILE, RESULTS_FILE))


def stage_name(stage_workdir: str) -> str:
  """The stage a workdir holds: results.json's `stage`, else the folder name if it is a stage."""
  results = read_results(stage_workdir) or {}
  name = fs.name(stage_workdir)
  return results.get('stage') or (name if name in stages.REGISTRY else stages.STAGES[0])


def find_stage_workdirs(workdir: str) -> dict[str, str]:
  """{stage: stage workdir}: the workdir itself if it is one, else its stage subfolders, in
  pipeline order (the registry's), then any others."""
  if not fs.exists(workdir):
    raise FileNotFoundError(f'--workdir={workdir} does not exist; pass a run or stage workdir')
  if is_stage_workdir(workdir):
    return {stage_name(workdir): workdir}
  found = {name: fs.join(workdir, name) for name in fs.scan(workdir)[0]
           if is_stage_workdir(fs.join(workdir, name))}
  order = {stage: rank for rank, stage in enumerate(stages.STAGES)}
  return dict(sorted(found.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))
