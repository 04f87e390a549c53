"""TPU slices as Cloud TPU names them: chip figures, topologies, and their JAX devices.

`parse_accelerator_type('v4-64')` -> a `Slice` (chips, topology `v4:2x4x4`, devices per chip);
`slice_devices(slice)` -> the devices of that slice as libtpu describes it, on any machine (no
TPU needed), for compiling with `jax.jit(...).lower(...).compile()`. Used by `plan.py`.
"""

import dataclasses
import math
import os
import re
import tempfile
from typing import Any

from simclr_jax import cli

os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')  # Several plans may run at once.
# No TPU here: libtpu need not look for its VM's metadata, and its init warnings say nothing.
for _name, _value in (('TPU_SKIP_MDS_QUERY', '1'), ('TPU_STDERR_LOG_LEVEL', '3'),
                      ('TPU_MIN_LOG_LEVEL', '3')):
  os.environ.setdefault(_name, _value)

from simclr_jax.chips import CHIPS, GIB, Chip  # noqa: E402, F401 - re-exported


class PlanError(ValueError):
  """A bad accelerator type or a plan that cannot be made: one line for the user."""


@dataclasses.dataclass(frozen=True)
class Slice:
  accelerator_type: str
  chip: Chip
  chips: int
  topology: str  # e.g. v4:4x4x2

  @property
  def num_devices(self) -> int:
    return self.chips * self.chip.devices_per_chip

  @property
  def hbm_per_device(self) -> float:
    return self.chip.hbm_gib * GIB / self.chip.devices_per_chip

  def scaled(self, factor: int) -> 'Slice':
    count = int(self.accelerator_type.rsplit('-', 1)[1]) * factor
    return parse_accelerator_type(f'{self.chip.name}-{count}')


def _grid(chips: int, dims: int) -> list[int]:
  """Near-cubic torus sides (ascending) for a power-of-two chip count: 32 chips, 3-D: 2x4x4."""
  if chips < 1 or chips & (chips - 1):
    raise PlanError(f'{chips} chips is not a power of two; pass --topology (e.g. v4:2x2x3)')
  sides = [1] * dims
  while math.prod(sides) < chips:
    sides[sides.index(min(sides))] *= 2
  return sorted(sides)


def parse_accelerator_type(accelerator_type: str) -> Slice:
  """gcloud's spelling (v3-128, v4-64, v5litepod-256, v5p-128, v6e-64) -> the slice."""
  match = re.fullmatch(r'(v\d+[a-z]*)-(\d+)', accelerator_type.strip())
  known = ', '.join(f'{name}-N' for name in CHIPS)
  if not match or match.group(1) not in CHIPS:
    raise PlanError(f'--accelerator-type={accelerator_type!r} is not a TPU type this plan knows; '
                    f'use one of {known} (as gcloud spells them, e.g. v4-64)')
  chip, count = CHIPS[match.group(1)], int(match.group(2))
  per_chip = chip.cores_per_chip if chip.counts_cores else 1
  if count < per_chip or count % per_chip:
    raise PlanError(f'--accelerator-type={accelerator_type}: {chip.name} counts '
                    f'{"TensorCores" if chip.counts_cores else "chips"}; use a multiple of '
                    f'{per_chip}')
  chips = count // per_chip
  sides = _grid(chips, chip.dims)
  if chip.dims == 3 and sides[0] == 1:
    sides = sides[1:] + [1]  # libtpu spells small v4/v5p slices 2x2x1.
  topology = f'{chip.topology_prefix}:' + 'x'.join(str(s) for s in sides)
  return Slice(accelerator_type, chip, chips, topology)


def slice_devices(tpu_slice: Slice) -> list[Any]:
  """The JAX devices of a described (not present) TPU slice."""
  from jax.experimental import topologies  # Deferred: after this module set libtpu's environment.

  kwargs = {'chip_config_name': 'megacore'} if tpu_slice.chip.megacore else {}
  with tempfile.NamedTemporaryFile(suffix='.log') as log:
    try:
      cli.start_jax()  # This machine's backend (CPU), without libtpu's TPU VM warnings.
      with cli.native_stderr_to(log.name):
        topology = topologies.get_topology_desc(
          platform='tpu', topology_name=tpu_slice.topology, **kwargs)
    except Exception as error:  # noqa: BLE001 - libtpu missing or a topology it rejects.
      raise PlanError(
        f'cannot describe {tpu_slice.accelerator_type} ({tpu_slice.topology}): '
        f'{str(error).splitlines()[0][:200]}; install libtpu with pip install -e ".[tpu]"'
      ) from error
  return list(topology.devices)
