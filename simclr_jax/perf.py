"""What the steps of a run cost: throughput, input wait, MFU, memory, and the verdicts.

    meter = StepMeter(...)                     # one per run segment of a stage
    for step ...:
      with meter.input(step):                  # blocked in the iterator + host-to-device copy
        batch = ...
      state, metrics = train_step(...)
      meter.dispatched(step, metrics)          # a thread records when the device finished it
      ...
      meter.window(step)  ->  {'images_per_s': ..., 'input_wait': ..., 'mfu': ..., ...}

JAX dispatches steps asynchronously, so the time the loop spends in `next(batches)` is not the
time the devices waited: while they still work through queued steps, a slow fetch costs
nothing. A thread blocks on each step's output and records when it became ready; the devices
waited for step n's input for the part of its fetch that came after step n-1 was done:

    wait(n) = max(0, fetched(n) - max(ready(n-1), fetch_started(n)))

The step time is the median of ready(n) - ready(n-1) over the window (steady state, robust to an
evaluation or a checkpoint in it); images/s counts the window's images over its wall time (from
the ready time of the step before the window to that of its last step), stalls included.
MFU = model FLOPs per step / (step time x devices x peak FLOP/s per device), with the analytic
model FLOPs the plan uses (`step_flops`: 3 x forward for the trained model, plus the teacher's
forward) and the peak of `PEAKS` by `device.device_kind`.
"""

import array
import contextlib
import dataclasses
import math
import os
import queue
import resource
import sys
import threading
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from simclr_jax import chips

GIB = 2**30
# The devices waited for input more than this fraction of a window's wall time: one warning.
INPUT_WAIT_WARNING = 0.10


@dataclasses.dataclass(frozen=True)
class Peak:
  """Dense bf16 peak of one JAX device (a TPU chip, or its TensorCore where each is a device)."""

  tflops: float
  source: str
  chip: str = ''  # chips.CHIPS's name of a TPU (what plan.json records).


def _tpu(name: str) -> Peak:
  chip = chips.CHIPS[name]
  return Peak(chip.peak_tflops / chip.devices_per_chip, chip.source, name)


# `device_kind` as JAX reports it -> peak. TPUs: the chip figures of chips.CHIPS (Cloud TPU
# pages; v3 runs one device per TensorCore, so half a chip). NVIDIA: the datasheets' dense BF16
# Tensor Core figure, which is half the "with sparsity" number they print.
_A100 = 'https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf'  # noqa: E501
_H100 = 'https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet'
_H200 = 'https://nvdam.widen.net/s/nb5zzzsjdf/hpc-datasheet-sc23-h200-datasheet-3002446'
_L4 = 'https://resources.nvidia.com/en-us-data-center-overview/l4-gpu-datasheet'
PEAKS: dict[str, Peak] = {
  'TPU v3': _tpu('v3'),
  'TPU v4': _tpu('v4'),
  'TPU v5 lite': _tpu('v5litepod'),
  'TPU v5e': _tpu('v5litepod'),
  'TPU v5': _tpu('v5p'),
  'TPU v5p': _tpu('v5p'),
  'TPU v6 lite': _tpu('v6e'),
  'TPU v6e': _tpu('v6e'),
  'NVIDIA A100': Peak(312.0, _A100),  # SXM4 and PCIe, 40 and 80 GB.
  'NVIDIA H100 PCIe': Peak(756.0, _H100),
  'NVIDIA H100 NVL': Peak(835.5, _H100),
  'NVIDIA H100': Peak(989.5, _H100),  # SXM5 ('NVIDIA H100 80GB HBM3').
  'NVIDIA H200 NVL': Peak(835.5, _H200),
  'NVIDIA H200': Peak(989.5, _H200),  # SXM.
  'NVIDIA L4': Peak(121.0, _L4),
}


def peak_of(device_kind: str) -> Peak | None:
  """The peak of a `device_kind` (exact name, else the longest table name it starts with)."""
  if device_kind in PEAKS:
    return PEAKS[device_kind]
  for name in sorted(PEAKS, key=len, reverse=True):
    if device_kind.startswith(name + ' ') or device_kind.startswith(name + '-'):
      return PEAKS[name]
  return None


def forward_flops(model, image_size: int) -> int:
  """Analytic FLOPs of one image's forward pass: 2 x the multiply-adds of every convolution and
  dense layer (out positions x kernel size), the usual 'model FLOPs' (no BatchNorm, no ReLU)."""

  total = [0]

  def count(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == '__call__' and isinstance(module, (nn.Conv, nn.Dense)):
      kernel = module.get_variable('params', 'kernel')
      total[0] += 2 * math.prod(out.shape[:-1]) * math.prod(kernel.shape)
    return out

  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  with nn.intercept_methods(count):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  return total[0]


def step_flops(model, image_size: int, num_views: int, teacher_model=None) -> int:
  """Model FLOPs of one step over all devices: forward + backward (3 x forward) of `model` on
  `num_views` images, plus the frozen teacher's forward on them."""
  flops = 3 * forward_flops(model, image_size) * num_views
  if teacher_model is not None:
    flops += forward_flops(teacher_model, image_size) * num_views
  return flops


def host_rss_gib() -> float:
  """This process's resident memory now (Linux), else its peak."""
  try:
    with open('/proc/self/statm') as file:  # local: the kernel's view of this process.
      pages = int(file.read().split()[1])
    return pages * resource.getpagesize() / GIB
  except (OSError, ValueError, IndexError):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS.
    return peak / (GIB if sys.platform == 'darwin' else 2**20)


def device_memory_peak_gib() -> float | None:
  """The peak memory in use of this host's busiest device (GiB), where the backend reports it
  (TPU, GPU); None on CPU."""
  peaks = []
  for device in jax.local_devices():
    try:
      stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - a backend without the call.
      stats = None
    if not stats or 'peak_bytes_in_use' not in stats:
      return None
    peaks.append(stats['peak_bytes_in_use'])
  return max(peaks) / GIB if peaks else None


_SAID_NO_PEAK: set[str] = set()


class StepMeter:
  """Per-window throughput, input wait, step time, MFU and memory of one run segment."""

  def __init__(self, stage: str, global_batch: int, num_views: int, flops_per_step: int,
               devices: list | None = None, num_processes: int | None = None):
    devices = devices if devices is not None else jax.devices()
    self.stage, self.global_batch, self.num_views = stage, global_batch, num_views
    self.flops_per_step = flops_per_step
    self.num_devices = len(devices)
    self.num_processes = num_processes or jax.process_count()
    self.device_kind = devices[0].device_kind
    self.peak = peak_of(self.device_kind)
    if self.peak is None and self.device_kind not in _SAID_NO_PEAK:
      _SAID_NO_PEAK.add(self.device_kind)  # Once per process, not per stage.
      logging.info('No MFU: the peak FLOP/s of device kind %r is not in perf.PEAKS (TPU v3-v6e, '
                   'NVIDIA A100/H100/H200/L4).', self.device_kind)
    self._fetch: dict[int, tuple[float, float]] = {}  # step -> (fetch started, fetched)
    self._ready: dict[int, float] = {}  # step -> when its output was ready
    self._pending: queue.Queue = queue.Queue()
    self._thread = threading.Thread(target=self._watch, name='step-meter', daemon=True)
    self._thread.start()
    self._last_step: int | None = None  # The last step of the previous window.
    self.step_times = array.array('d')  # Every step interval of the segment, for the median.
    self._wall = self._waited = 0.0
    self._steps = 0
    self.memory_peak_gib: float | None = None
    self.rss_peak_gib = 0.0

  def _watch(self) -> None:
    while True:
      item = self._pending.get()
      try:
        if item is None:
          return
        step, output = item
        try:
          jax.block_until_ready(output)
        except Exception:  # noqa: BLE001 - the loop sees the step's error itself.
          pass
        self._ready[step] = time.perf_counter()
      finally:
        self._pending.task_done()

  @contextlib.contextmanager
  def input(self, step: int):
    """Times the fetch of `step`'s batch: the iterator and the copy to the devices."""
    started = time.perf_counter()
    yield
    self._fetch[step] = (started, time.perf_counter())

  def dispatched(self, step: int, output: Any) -> None:
    """`step` was dispatched; `output` (any of its results) becomes ready when it is done."""
    self._pending.put((step, output))

  def close(self) -> None:
    self._pending.put(None)
    self._thread.join(timeout=60)

  def window(self, step: int) -> dict[str, float]:
    """The figures of the steps since the previous window up to `step` (the loop has already
    waited for them: it read their metrics). {} for a window with no step interval yet (the
    first step of a segment, which includes compilation)."""
    self._pending.join()
    first = (self._last_step + 1) if self._last_step is not None else min(self._fetch, default=step)
    steps = [n for n in range(first, step + 1) if n in self._ready]
    intervals = [self._ready[n] - self._ready[n - 1] for n in steps if n - 1 in self._ready]
    waits = [max(0.0, self._fetch[n][1] - max(self._ready[n - 1], self._fetch[n][0]))
             for n in steps if n - 1 in self._ready and n in self._fetch]
    self._last_step = step
    for old in [n for n in self._ready if n < step]:
      del self._ready[old]
    for old in [n for n in self._fetch if n <= step]:
      del self._fetch[old]
    if not intervals:
      return {}
    wall = sum(intervals)
    self.step_times.extend(intervals)
    self._wall += wall
    self._waited += sum(waits)
    self._steps += len(intervals)
    step_time = float(np.median(intervals))
    images_per_s = self.global_batch * len(intervals) / wall
    figures = {
      'images_per_s': images_per_s,
      'images_per_s_per_host': images_per_s / self.num_processes,
      'views_per_s_per_device': images_per_s * self.num_views / self.num_devices,
      'step_time_s': step_time,
      'input_wait': sum(waits) / wall,
      'host_rss_gib': host_rss_gib(),
    }
    self.rss_peak_gib = max(self.rss_peak_gib, figures['host_rss_gib'])
    if self.peak is not None:
      figures['mfu'] = self.mfu(step_time)
    memory = device_memory_peak_gib()
    if memory is not None:
      figures['device_memory_gib'] = memory
      self.memory_peak_gib = max(self.memory_peak_gib or 0.0, memory)
    return figures

  def mfu(self, step_time: float) -> float:
    """Model FLOPs utilisation at `step_time` seconds per step."""
    return self.flops_per_step / (step_time * self.num_devices * self.peak.tflops * 1e12)

  def summary(self) -> dict[str, Any]:
    """The segment's figures for results.json ({} when it measured no step interval)."""
    if not self.step_times:
      return {}
    step_time = float(np.median(self.step_times))
    images_per_s = self.global_batch / step_time
    result = {
      'step_time_median_s': step_time,
      'images_per_s': images_per_s,
      'images_per_s_per_host': images_per_s / self.num_processes,
      'views_per_s_per_device': images_per_s * self.num_views / self.num_devices,
      'input_wait_fraction': self._waited / self._wall,
      'mfu': self.mfu(step_time) if self.peak is not None else None,
      'device_kind': self.device_kind,
      'peak_tflops_per_device': self.peak.tflops if self.peak is not None else None,
      'model_tflop_per_step': self.flops_per_step / 1e12,
      'device_memory_peak_gib': self.memory_peak_gib,
      'host_rss_peak_gib': self.rss_peak_gib,
      'measured_steps': self._steps,
    }
    return result


class Verdicts:
  """The two lines a person needs once per segment: the devices wait for input (with the
  levers), and the measured step time against the plan's roofline bound."""

  def __init__(self, stage: str, plan_row: dict[str, Any] | None = None,
               threshold: float = INPUT_WAIT_WARNING):
    self.stage, self.plan_row, self.threshold = stage, plan_row, threshold
    self._windows = 0
    self.warned = self.compared = False

  def __call__(self, first_step: int, last_step: int, figures: dict[str, float]) -> list[str]:
    """The lines to say (also logged) after the window of steps first_step..last_step."""
    if not figures:
      return []
    self._windows += 1
    if self._windows == 1:
      return []  # The first window fills the input pipeline's buffers: not a verdict.
    lines = []
    if not self.warned and figures['input_wait'] > self.threshold:
      self.warned = True
      lines.append(input_wait_line(self.stage, first_step, last_step, figures['input_wait'],
                                   self.threshold))
      logging.warning('%s', lines[-1])
    if not self.compared and self.plan_row and self.plan_row.get('step_ms'):
      self.compared = True
      lines.append(plan_line(self.stage, figures, self.plan_row))
      logging.info('%s', lines[-1])
    return lines


def input_wait_line(stage: str, first: int, last: int, wait: float, threshold: float) -> str:
  cores = _cpu_count()
  return (
    f'{stage}: the devices waited for input {100 * wait:.0f}% of steps {first}-{last} (over '
    f'{100 * threshold:.0f}%): the host pipeline is the bottleneck; levers: more host CPU cores '
    f'({cores} here for {jax.local_device_count()} devices), data.cache=True, a smaller '
    'data.canvas_size, data.device_resident=True for a small dataset, the tfds format instead '
    'of an image folder (docs/BENCHMARKS.md, input pipeline)')


def plan_line(stage: str, figures: dict[str, float], row: dict[str, Any]) -> str:
  measured_ms = 1e3 * figures['step_time_s']
  bound = row['step_ms']
  mfu = (f', MFU {100 * figures["mfu"]:.0f}% (plan: {100 * row["mfu"]:.0f}% at the bound)'
         if 'mfu' in figures and 'mfu' in row else '')
  return (f'{stage}: step time {measured_ms:.4g} ms against the plan\'s roofline bound '
          f'{bound:.4g} ms for {row.get("accelerator_type", "this slice")} '
          f'({100 * bound / measured_ms:.0f}% of the bound\'s speed){mfu}')


def _cpu_count() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1
