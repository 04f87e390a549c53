"""plan.json: what a plan was made from (to reuse it), and which plan describes a run.

`python -m simclr_jax.plan` records a fingerprint (config, slice, jax, libtpu, this package's
code) and reuses a plan whose fingerprint matches; `launch/tpu_vm.sh` copies the plan to
WORKDIR/plan.json, where `run.py` finds the row of each stage it trains.
"""

import hashlib
import importlib.metadata
import json
from typing import Any

import jax

from simclr_jax import fs, perf

PLAN_FILE = 'plan.json'  # In a run's workdir.


def config_hash(config) -> str:
  """A hash of the config's fields that decide the compiled program (not `distributed.*`, which
  the launchers add per host)."""
  fields = json.loads(config.to_json_best_effort())
  fields.pop('distributed', None)
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def code_hash() -> str:
  """A hash of the package's Python sources (what the compiled program is made of)."""
  root = fs.parent(__file__)
  digest = hashlib.sha256()
  for directory, _, files in sorted(fs.walk(root)):
    for name in sorted(files):
      if name.endswith('.py'):
        path = fs.join(directory, name)
        digest.update(path[len(root):].encode())
        digest.update(fs.read_bytes(path))
  return digest.hexdigest()[:16]


def plan_row_for_run(plan: dict[str, Any], config, stage: str) -> tuple[dict | None, str]:
  """The plan's row for `stage` when the plan was made for this config and these devices;
  else (None, why not)."""
  if plan.get('config_hash') != config_hash(config):
    return None, 'it was made for another config (or other overrides)'
  rows = [row for row in plan.get('stages', []) if row.get('stage') == stage]
  if not rows:
    return None, f'it has no row for {stage}'
  row = rows[0]
  peak = perf.peak_of(jax.devices()[0].device_kind)
  chip = plan.get('chip', {})
  if row.get('devices') != jax.device_count() or peak is None or chip.get('name') != peak.chip:
    return None, (f'it is for {plan.get("accelerator_type")} ({row.get("devices")} devices), '
                  f'this run has {jax.device_count()} {jax.devices()[0].device_kind} devices')
  return {**row, 'accelerator_type': plan.get('accelerator_type')}, ''


def fingerprint(config, accelerator_type: str, topology: str, max_fix_compiles: int) -> dict:
  """What a plan depends on: the config (overrides included), the slice, the compiler (jax,
  libtpu) and this package's code. A plan with the same fingerprint is reused."""
  return {'config_hash': config_hash(config), 'accelerator_type': accelerator_type,
          'topology': topology, 'max_fix_compiles': max_fix_compiles, 'jax': jax.__version__,
          'libtpu': _libtpu_version(), 'code': code_hash()}


def _libtpu_version() -> str:
  for name in ('libtpu', 'libtpu-nightly'):
    try:
      return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue
  return ''


def reusable(out: str, wanted: dict) -> tuple[dict | None, str]:
  """(the plan in `out`, '') when its fingerprint is `wanted`; else (None, why not)."""
  if not fs.exists(out):
    return None, ''
  try:
    plan = json.loads(fs.read_text(out))
  except (OSError, ValueError):
    return None, f'{out} is not a readable plan'
  differing = sorted(key for key in wanted if plan.get('fingerprint', {}).get(key) != wanted[key])
  if differing:
    return None, f'{out} was made with another {", ".join(differing)}'
  return plan, ''
