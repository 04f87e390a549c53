"""Markdown rows of plan JSON files (python -m simclr_jax.plan --out=...), for docs/BENCHMARKS.md.

    python benchmarks/plan_table.py workdirs/plans/*.json
"""

import json
import sys


def rows(paths: list[str]) -> list[str]:
  lines = ['| config | slice | stage | devices | batch/dev | fits | HBM/dev GiB (of) '
           '| TFLOP/step/dev | roofline step | views/s/chip | MFU at bound |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  for path in paths:
    with open(path) as file:
      plan = json.load(file)
    for row in plan['stages']:
      total = row.get('total_gib', row.get('needed_gib'))
      lines.append(
        f'| {plan["config"]} | {plan["accelerator_type"]} ({plan["topology"]}) | {row["stage"]} '
        f'| {row["devices"]} | {row["per_device_batch"]} | {"yes" if row["fits"] else "**no**"} '
        f'| {total:.1f} ({row["capacity_gib"]:.1f}) '
        f'| {row.get("tflop_per_device", float("nan")):.1f} '
        f'| {row.get("step_ms", float("nan")):.0f} ms '
        f'| {row.get("views_per_s_per_chip", float("nan")):.0f} '
        f'| {100 * row.get("mfu", float("nan")):.0f} % |')
  return lines


if __name__ == '__main__':
  print('\n'.join(rows(sys.argv[1:])))
