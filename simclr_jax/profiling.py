"""A `jax.profiler` trace of chosen steps of a run (`train.profile_steps=START,COUNT`).

The trace goes to STAGE_WORKDIR/plugins/profile/<run>/ for TensorBoard's Profile tab; on a
bucket workdir it is written to a local folder first and copied there.
"""

import tempfile
from typing import Any

import jax
from absl import logging

from simclr_jax import fs, validation


class Profiler:
  """A `jax.profiler` trace of steps START..START+COUNT-1 into the workdir, for TensorBoard's
  profile tab (`plugins/profile/<run>/*.xplane.pb`); on process 0 unless `all_hosts`."""

  def __init__(self, workdir: str, spec: str, first_step: int, all_hosts: bool = False):
    self.workdir = workdir
    parsed = validation.parse_profile_steps(spec)
    self.start, self.count = parsed if parsed else (0, 0)
    self.active = False
    self._local = ''
    if parsed and not all_hosts and jax.process_index() > 0:
      self.start = 0
    elif parsed and self.start < first_step:
      logging.warning('train.profile_steps=%s: this run resumes at step %d, after step %d; no '
                      'profile (choose later steps).', spec, first_step, self.start)
      self.start = 0

  @property
  def last(self) -> int:
    return self.start + self.count - 1

  def before(self, step: int) -> None:
    if self.start and step == self.start:
      remote = fs.is_remote(self.workdir)
      self._local = tempfile.mkdtemp(prefix='simclr_profile_') if remote else self.workdir
      jax.profiler.start_trace(self._local)
      self.active = True

  def after(self, step: int, output: Any) -> None:
    if self.active and step >= self.last:
      jax.block_until_ready(output)
      self.stop()

  def stop(self) -> None:
    if not self.active:
      return
    self.active = False
    jax.profiler.stop_trace()
    where = fs.join(self.workdir, 'plugins', 'profile')
    if self._local != self.workdir:  # A bucket: the trace is written here, then copied.
      for directory, _, files in fs.walk(self._local):
        for name in files:
          path = fs.join(directory, name)
          target = fs.join(self.workdir, path[len(self._local):].lstrip('/'))
          fs.makedirs(fs.parent(target))
          fs.write_bytes(target, fs.read_bytes(path))
      fs.rmtree(self._local)
    logging.info('Profile of steps %d-%d in %s (TensorBoard --logdir %s: the Profile tab).',
                 self.start, self.last, where, self.workdir)
