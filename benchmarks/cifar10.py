"""SimCLR pretraining on the real CIFAR-10 subset (shared/data/cifar10) on this machine.

    python benchmarks/cifar10.py --data=../shared/data/cifar10 --epochs=2

configs/cifar10_r18.py (official CIFAR recipe: colour 0.5, no blur, temperature 0.5, LARS) with
an image-folder source, a narrower ResNet-18 for CPU (`--width`, `--blocks`) and the length set
in epochs. Runs `simclr_jax.train.train_and_evaluate` (pretrain stage only) and reports wall time,
views/s, the linear probe's eval top-1 and the kNN top-1 from results.json.
"""

import argparse
import os
import tempfile

import common  # noqa: F401  (puts the repo root on sys.path)


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', default=os.path.join(common.REPO, '..', 'shared', 'data',
                                                     'cifar10'))
  parser.add_argument('--epochs', type=float, default=2.0)
  parser.add_argument('--steps', type=int, default=0, help='if > 0, overrides --epochs')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--width', type=float, default=0.25)
  parser.add_argument('--blocks', default='1,1,1,1', help="blocks per group; '' = ResNet-18")
  parser.add_argument('--knn_k', type=int, default=50)
  parser.add_argument('--workdir', default='', help='default: a fresh temporary folder')
  parser.add_argument('--output', default='')
  args = parser.parse_args(argv)

  import jax
  from simclr_jax import train
  from simclr_jax.data import folders

  config = common.load_config(os.path.join(common.REPO, 'configs', 'cifar10_r18.py'))
  config.stages = ('pretrain',)
  config.data.dataset = 'folder'
  config.data.folder = os.path.abspath(args.data)
  config.model.width_multiplier = args.width
  if args.blocks:
    config.model.blocks_per_stage = tuple(int(b) for b in args.blocks.split(','))
  num_examples = len(folders.list_image_folder(config.data.folder, 'train')[0])
  steps = args.steps or max(1, int(args.epochs * num_examples // args.batch))
  config.train.global_batch_size = args.batch
  config.train.train_steps = steps
  config.optim.warmup_epochs = min(config.optim.warmup_epochs, 0.1 * steps * args.batch
                                   / num_examples)
  config.train.log_every_steps = max(1, min(50, steps))
  config.train.checkpoint_every_steps = steps
  config.train.eval_every_steps = 0
  config.knn.every_steps = 0
  config.knn.k = args.knn_k
  workdir = args.workdir or tempfile.mkdtemp(prefix='simclr_cifar10_bench_')
  results = train.train_and_evaluate(config, workdir, 'pretrain')
  wall = results['wall_time_s']
  summary = {
    'data': config.data.folder, 'num_train_examples': num_examples, 'steps': steps,
    'epochs': steps * args.batch / num_examples, 'global_batch_size': args.batch,
    'width_multiplier': args.width, 'blocks_per_stage': args.blocks or 'resnet18',
    'num_devices': jax.device_count(), 'wall_time_s': wall,
    'views_per_s': 2 * steps * args.batch / wall,
    'eval_top1': results.get('eval_top1'), 'knn_top1': results.get('knn_top1'),
    'workdir': workdir,
  }
  common.print_table([{k: v for k, v in summary.items() if k not in ('data', 'workdir')}])
  common.write_json(args.output, 'cifar10', summary)
  return summary


if __name__ == '__main__':
  main()
