"""Cloud TPU chips as Google documents them: HBM, peak bf16 FLOP/s, HBM bandwidth, topology.

No side effects on import (unlike `tpu_slices`, which sets libtpu's environment for describing
slices on a machine without TPUs): the training loop reads the peaks here for its MFU.
"""

import dataclasses

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation, per chip, as Google Cloud documents it (`source`)."""

  name: str  # gcloud's prefix: v4 in v4-64.
  topology_prefix: str  # jax.experimental.topologies name: v5e in v5e:4x4.
  counts_cores: bool  # The accelerator-type number counts TensorCores (else chips).
  cores_per_chip: int
  megacore: bool  # One JAX device per chip (v4, v5p); else one per TensorCore.
  dims: int  # Torus dimensions of the slice topology.
  hbm_gib: float  # HBM per chip.
  peak_tflops: float  # bf16 per chip.
  hbm_gbps: float  # HBM bandwidth per chip, GB/s.
  source: str

  @property
  def devices_per_chip(self) -> int:
    return 1 if self.megacore else self.cores_per_chip


# Figures from each generation's page of docs.cloud.google.com/tpu/docs (read 2026-11-30).
# v5e/v6e pages state HBM in GB (converted here); v5p's newer page says 95 GiB.
CHIPS = {
  'v3': Chip('v3', 'v3', True, 2, False, 2, 32.0, 123.0, 900.0,
             'https://cloud.google.com/tpu/docs/v3'),
  'v4': Chip('v4', 'v4', True, 2, True, 3, 32.0, 275.0, 1200.0,
             'https://cloud.google.com/tpu/docs/v4'),
  'v5litepod': Chip('v5litepod', 'v5e', False, 1, False, 2, 16e9 / GIB, 197.0, 819.0,
                    'https://cloud.google.com/tpu/docs/v5e'),
  'v5p': Chip('v5p', 'v5p', True, 2, True, 3, 95.0, 459.0, 2765.0,
              'https://cloud.google.com/tpu/docs/v5p-training'),
  'v6e': Chip('v6e', 'v6e', False, 1, False, 2, 32e9 / GIB, 918.0, 1640.0,
              'https://cloud.google.com/tpu/docs/v6e'),
}
