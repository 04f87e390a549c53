"""Metric writers and the progress line (steps/s, ETA), with or without TensorFlow.

With TensorFlow installed (the normal install) these are clu's: TensorBoard event files in the
workdir plus the log, and `ReportProgress`. clu's writers import TensorFlow at import time, so
when it is absent (device-resident training needs only JAX) the same interface falls back to
the log, still with steps/s and ETA; `metrics.jsonl` is written either way by the loop.
"""

import time
from typing import Any, Mapping

from absl import logging


def itstime(step: int, every: int, total: int, *, last: bool = True) -> bool:
  """Whether a periodic action runs after `step` (as big_vision's `u.itstime`): at every
  `every`-th step (never when every <= 0), and with `last` also at the final step `total`."""
  return (every > 0 and step % every == 0) or (last and step == total)


def tensorflow_available() -> bool:
  try:
    import tensorflow  # noqa: F401
  except ImportError:
    return False
  return True


class LogWriter:
  """The subset of clu's MetricWriter the loop uses, writing to the absl log only."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    text = ', '.join(f'{k}={float(v):.6g}' for k, v in sorted(scalars.items()))
    logging.info('[%d] %s', step, text)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    del hparams  # config.json in the workdir holds them.

  def flush(self) -> None:
    pass


class ProgressLog:
  """steps/s, percentage and ETA in the log every `every_secs` (clu ReportProgress fallback)."""

  def __init__(self, num_train_steps: int, writer: Any, every_secs: float = 60.0):
    self.num_train_steps, self.writer, self.every_secs = num_train_steps, writer, every_secs
    self._last_time, self._last_step = None, None

  def __call__(self, step: int) -> None:
    now = time.time()
    if self._last_time is None:
      self._last_time, self._last_step = now, step
      return
    if now - self._last_time < self.every_secs and step < self.num_train_steps:
      return
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    eta = (self.num_train_steps - step) / max(rate, 1e-9)
    logging.info('%.2f steps/s, %.1f%% (%d/%d), ETA: %dm%02ds', rate,
                 100 * step / self.num_train_steps, step, self.num_train_steps, eta // 60, eta % 60)
    self.writer.write_scalars(step, {'steps_per_sec': rate})
    self._last_time, self._last_step = now, step


class _Writers:
  """Scalars to TensorBoard at every log and to the console at most every `console_every_secs`
  (plus the first and the final step's); hyperparameters to TensorBoard only (people read them
  in config.json: in the log they were a 3.6 KB line per stage). metrics.jsonl has every log."""

  def __init__(self, summary: Any, log: Any, final_step: int = 0, console_every_secs: float = 30.0):
    self.summary, self.log = summary, log
    self.final_step, self.console_every_secs = final_step, console_every_secs
    self._console_time: float | None = None
    self._console_step = -1

  def _to_console(self, step: int) -> bool:
    now = time.time()
    if (step == self._console_step or step == self.final_step or self._console_time is None
        or now - self._console_time >= self.console_every_secs):
      self._console_time, self._console_step = now, step
      return True
    return False

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if self.summary is not None:
      self.summary.write_scalars(step, scalars)
    if self.log is not None and self._to_console(step):
      self.log.write_scalars(step, scalars)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    if self.summary is not None:
      self.summary.write_hparams(hparams)

  def flush(self) -> None:
    for writer in (self.summary, self.log):
      if writer is not None:
        writer.flush()

  def close(self) -> None:
    for writer in (self.summary, self.log):
      if writer is not None:
        writer.close()


def create_writer(workdir: str, just_logging: bool, final_step: int = 0):
  if tensorflow_available():
    from clu import metric_writers  # Deferred: clu's writers import TensorFlow.

    summary = None if just_logging else metric_writers.SummaryWriter(workdir)
    return _Writers(summary, metric_writers.LoggingWriter(), final_step)
  logging.warning('TensorFlow is not installed: metrics go to the log and metrics.jsonl only.')
  return LogWriter()


def create_progress(num_train_steps: int, writer: Any):
  if tensorflow_available():
    from clu import periodic_actions  # Deferred: imports TensorFlow.

    # steps/s and uptime to TensorBoard only: the progress line already says them in the log.
    writer = getattr(writer, 'summary', writer)
    return periodic_actions.ReportProgress(num_train_steps=num_train_steps, writer=writer)
  return ProgressLog(num_train_steps, writer)
