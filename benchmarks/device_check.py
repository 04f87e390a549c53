"""The checks to run when an accelerator is lent: one command, one summary table, < 8 minutes.

    python benchmarks/device_check.py [--out=DIR] [--quick]

1. the train-step benchmark (train_step.py): ResNet-50 1x at 224 px in bfloat16, batch 256 over
   the local devices: steps/s, views/s per device, MFU, peak device memory;
2. the demo (`python -m simclr_jax.main --config=configs/demo.py`): its table, and what its
   pretraining's results.json says (images/s, input wait, MFU, memory);
3. the input benchmark (input_pipeline.py) at 32 and 224 px: host decode images/s per core,
   device augmentation images/s;
then one table. Every part runs as its own process with a time limit; a part that fails is a
row saying so, and the script exits 1. `--quick` runs the same parts at toy sizes (a tiny model,
2 steps per stage): how CI keeps the script working on a CPU (tests/benchmarks_test.py).
Outputs (JSON of each part, the demo's workdir, logs) go to DIR (default
benchmarks/results/device_check).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import common

FULL = {
  'train_step': ['--config=configs/r50_1x.py', '--batch=256', '--steps=20', '--dtype=bfloat16',
                 '--num_classes=1000'],
  'demo': [],
  'input_pipeline': ['--sizes=32,224', '--batch=64', '--batches=8'],
}
QUICK = {
  'train_step': ['--config=configs/demo.py', '--batch=16', '--steps=1', '--width=0.125'],
  'demo': ['--config.stages=pretrain,', '--config.train.train_steps=2',
           '--config.model.width_multiplier=0.125', '--config.train.plots_at_end=False',
           '--config.knn.enabled=False', '--config.train.eval_at_end=False'],
  'input_pipeline': ['--sizes=32', '--batch=8', '--batches=1'],
}
LIMITS_S = {'train_step': 240, 'demo': 300, 'input_pipeline': 120}


def _run(name: str, command: list[str], out: str, limit_s: int) -> tuple[bool, float]:
  """Runs one part, its output in OUT/NAME.log; (succeeded, seconds)."""
  started = time.time()
  with open(os.path.join(out, f'{name}.log'), 'w') as log:
    try:
      done = subprocess.run(command, cwd=common.REPO, stdout=log, stderr=subprocess.STDOUT,
                            timeout=limit_s)
      ok = done.returncode == 0
    except subprocess.TimeoutExpired:
      ok = False
  return ok, time.time() - started


def _load(path: str) -> dict:
  try:
    with open(path) as file:
      return json.load(file)
  except (OSError, ValueError):
    return {}


def _fmt(value, spec: str = '.4g') -> str:
  return '-' if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default=os.path.join(common.RESULTS_DIR, 'device_check'))
  parser.add_argument('--quick', action='store_true', help='toy sizes (CI on a CPU)')
  args = parser.parse_args(argv)
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  parts = QUICK if args.quick else FULL
  python = sys.executable
  here = os.path.dirname(os.path.abspath(__file__))
  demo_workdir = os.path.join(out, 'demo')
  commands = {
    'train_step': [python, os.path.join(here, 'train_step.py'), *parts['train_step'],
                   f'--output={out}/train_step.json'],
    'demo': [python, '-m', 'simclr_jax.main', '--config=configs/demo.py',
             f'--workdir={demo_workdir}', *parts['demo']],
    'input_pipeline': [python, os.path.join(here, 'input_pipeline.py'),
                       *parts['input_pipeline'], f'--output={out}/input_pipeline.json'],
  }
  rows = []
  for name, command in commands.items():
    print(f'{name}: {" ".join(command[1:])}', flush=True)
    ok, seconds = _run(name, command, out, LIMITS_S[name])
    row = {'part': name, 'ok': ok, 'seconds': seconds}
    if name == 'train_step':
      step = _load(f'{out}/train_step.json')
      row.update(what=f'{os.path.basename(step.get("config", "?"))} {step.get("image_size")} px '
                      f'{step.get("compute_dtype")} batch {step.get("global_batch_size")}',
                 views_per_s_per_device=step.get('views_per_s_per_device'),
                 mfu=step.get('mfu'), memory_gib=(step.get('peak_memory_bytes') or 0) / 2**30
                 or None, device=step.get('machine', {}).get('device_kind'))
    elif name == 'demo':
      pretrain = _load(os.path.join(demo_workdir, 'pretrain', 'results.json'))
      row.update(what=f'demo pretrain {pretrain.get("steps")} steps, probe top-1 '
                      f'{_fmt(pretrain.get("eval_top1"), ".3f")}',
                 images_per_s=pretrain.get('images_per_s'),
                 input_wait=pretrain.get('input_wait_fraction'), mfu=pretrain.get('mfu'),
                 memory_gib=pretrain.get('device_memory_peak_gib'),
                 device=pretrain.get('device_kind'))
    else:
      data = _load(f'{out}/input_pipeline.json')
      host = [r for r in data.get('rows', []) if r['mode'] == 'canvas']
      device = [r for r in data.get('rows', []) if r['mode'] == 'full']
      row.update(what='input: ' + ', '.join(
        f'{r["image_size"]} px host {r["host_images_per_s_per_core"]:.0f}/s/core' for r in host),
        images_per_s=device[-1]['device_images_per_s'] if device else None,
        device=data.get('machine', {}).get('device_kind'))
    rows.append(row)
  print(f'\nDevice check ({"quick" if args.quick else "full"}), outputs in {out}:')
  print(f'{"part":<15}{"ok":<4}{"time":>7}  {"img/s":>8}{"views/s/dev":>12}{"MFU":>7}'
        f'{"input wait":>11}{"memory":>9}  what (device)')
  for row in rows:
    mfu = f'{100 * row["mfu"]:.1f}%' if row.get('mfu') else '-'
    wait = f'{100 * row["input_wait"]:.1f}%' if row.get('input_wait') is not None else '-'
    memory = f'{row["memory_gib"]:.2f}G' if row.get('memory_gib') else '-'
    print(f'{row["part"]:<15}{"yes" if row["ok"] else "NO":<4}{row["seconds"]:>6.0f}s  '
          f'{_fmt(row.get("images_per_s"), ".0f"):>8}'
          f'{_fmt(row.get("views_per_s_per_device"), ".0f"):>12}{mfu:>7}{wait:>11}{memory:>9}  '
          f'{row.get("what", "")} ({row.get("device")})')
  with open(os.path.join(out, 'summary.json'), 'w') as file:
    json.dump(rows, file, indent=2)
  if not all(row['ok'] for row in rows):
    print(f'Some parts failed: their logs are in {out}/<part>.log', file=sys.stderr)
  return rows


if __name__ == '__main__':
  sys.exit(0 if all(row['ok'] for row in main()) else 1)
