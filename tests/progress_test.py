"""Tests for simclr_jax/progress.py: every log to TensorBoard, a readable few to the console."""

from simclr_jax import progress


class _Recorder:
  def __init__(self):
    self.steps = []

  def write_scalars(self, step, scalars):
    self.steps.append(step)


def test_console_gets_the_first_the_final_and_one_log_per_interval(monkeypatch):
  clock = [0.0]
  monkeypatch.setattr(progress.time, 'time', lambda: clock[0])
  summary, console = _Recorder(), _Recorder()
  writers = progress._Writers(summary, console, final_step=100, console_every_secs=30.0)
  for step in range(10, 101, 10):  # A log every 10 steps, 10 s apart.
    clock[0] += 10.0
    writers.write_scalars(step, {'loss': 1.0})
    if step == 50:
      writers.write_scalars(step, {'eval_top1': 0.5})  # Same step: follows the step's choice.
  assert summary.steps == [10, 20, 30, 40, 50, 50, 60, 70, 80, 90, 100]
  assert console.steps == [10, 40, 70, 100]  # First, every >= 30 s, and the final step.


def test_itstime_every_n_steps_and_at_the_end():
  assert [s for s in range(1, 11) if progress.itstime(s, 3, 10)] == [3, 6, 9, 10]
  assert [s for s in range(1, 11) if progress.itstime(s, 3, 10, last=False)] == [3, 6, 9]
  assert [s for s in range(1, 11) if progress.itstime(s, 0, 10)] == [10]
  assert not any(progress.itstime(s, 0, 10, last=False) for s in range(1, 11))
