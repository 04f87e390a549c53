"""Shared pieces of the benchmarks: repo path, config loading, timing, tables, JSON output."""

import datetime
import importlib.util
import json
import os
import platform
import sys
import time
from typing import Any, Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # `configs` and `simclr_jax` import from the repo root.
  sys.path.insert(0, REPO)
RESULTS_DIR = os.path.join(REPO, 'benchmarks', 'results')

def peak_tflops(device_kind: str) -> float | None:
  """Dense bf16 peak of one device: the table the training loop's MFU uses (perf.PEAKS)."""
  from simclr_jax import perf

  peak = perf.peak_of(device_kind)
  return peak.tflops if peak else None


def load_config(path: str):
  """`get_config()` of a config file (as ml_collections config_flags does)."""
  spec = importlib.util.spec_from_file_location('benchmark_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def machine() -> dict[str, Any]:
  import jax

  model = platform.processor()
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
    model = names[0] if names else model
  device = jax.devices()[0]
  return {
    'date': datetime.datetime.now().isoformat(timespec='seconds'),
    'cpu': model, 'cpu_cores': os.cpu_count(), 'platform': device.platform,
    'device_kind': device.device_kind, 'device_count': jax.device_count(),
    'jax': jax.__version__,
  }


def time_calls(fn: Callable[[], Any], repeats: int) -> list[float]:
  """Wall seconds of each of `repeats` calls; `fn` must block until its result is ready."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def print_table(rows: list[dict[str, Any]]) -> None:
  """Rows of equal keys as an aligned text table (floats to 4 significant digits)."""
  if not rows:
    return
  keys = list(rows[0])
  cell = lambda v: f'{v:.4g}' if isinstance(v, float) else str(v)
  widths = {k: max(len(k), *(len(cell(r.get(k))) for r in rows)) for k in keys}
  print('  '.join(k.ljust(widths[k]) for k in keys))
  for row in rows:
    print('  '.join(cell(row.get(k)).ljust(widths[k]) for k in keys))


def write_json(output: str, name: str, results: dict[str, Any]) -> str:
  """Writes results (plus machine info) to `output` or benchmarks/results/<name>.json."""
  output = output or os.path.join(RESULTS_DIR, f'{name}.json')
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, 'w') as f:
    json.dump({'benchmark': name, 'machine': machine(), **results}, f, indent=2)
  print(f'wrote {output}')
  return output
