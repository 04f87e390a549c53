"""Workdir safety and preemption: checks before a stage starts, a clean stop on SIGTERM.

- An unwritable or nearly full workdir is reported before anything is built.
- A workdir that holds a run of a different config is not silently continued: the fields that
  define the run (model, data, optimiser, seed, ...) must match the saved `config.json`.
- SIGTERM (the Cloud TPU preemption notice) and Ctrl-C (SIGINT) make the loop save at the
  current step and stop; a second Ctrl-C exits at once.
"""

import json
import os
import shutil
import signal
import threading

import jax
import ml_collections
from absl import logging
from etils import epath
from flax import traverse_util

from simclr_jax import validation

CONFIG_FILE = 'config.json'
MIN_FREE_BYTES = 256 * 2**20
# Fields that may change between runs in one workdir: schedule length (to extend a run),
# logging/eval/checkpoint cadence, hosts, the state layout, and the stage list.
MAY_CHANGE = (
  'train.train_steps', 'train.train_epochs', 'train.log_every_steps',
  'train.checkpoint_every_steps', 'train.keep_checkpoints', 'train.eval_every_steps',
  'train.eval_batch_size', 'train.eval_at_end', 'train.allow_config_change', 'train.plots_at_end',
  'train.shard_state',  # Checkpoints restore into either layout.
  'compilation_cache_dir', 'knn.', 'distributed.',
  'stages', 'name',
)


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


def _defining_fields(config_dict: dict) -> dict:
  flat = traverse_util.flatten_dict(config_dict, sep='.')
  return {k: v for k, v in flat.items() if not any(k.startswith(p) for p in MAY_CHANGE)}


def check_same_run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a workdir whose saved config differs in a run-defining field (unless allowed)."""
  path = epath.Path(workdir) / CONFIG_FILE
  current = json.loads(config.to_json_best_effort())
  if path.exists():
    saved = _defining_fields(json.loads(path.read_text()))
    now = _defining_fields(current)
    differing = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if differing and not config.train.allow_config_change:
      shown = ', '.join(f'{k}: {saved.get(k)!r} -> {now.get(k)!r}' for k in differing[:6])
      raise validation.ConfigError(
        f'workdir {workdir!r} holds a run of a different config ({shown}); use a new --workdir '
        'or pass --config.train.allow_config_change=True to continue it anyway'
      )
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
      from jax.experimental import multihost_utils

      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # Preemption service not started (no jax.distributed).
        pass
    return self._event.is_set()

  def close(self) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}
