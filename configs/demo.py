"""Demo: the whole SimCLRv2 pipeline on the embedded CIFAR-10 photos, with a tiny ResNet.

    python -m simclr_jax.main --config=configs/demo.py

Stages, each in workdirs/demo/<stage>/: pretrain (SimCLR on 1,000 photos, no labels) ->
finetune (10 labelled photos per class, from the first projection layer) -> distill (the
fine-tuned teacher's soft labels on all 1,000 photos, student initialised from pretraining) ->
supervised (the baseline: the same 100 labelled photos, no pretraining).
Hardware: any CPU (2 cores are enough); also runs unchanged on 1, 2, 4 or 8 GPUs or TPU chips
(every batch divides among them).
Expected: about 4 minutes on 2 CPU cores (3 min 50 s measured, docs/BENCHMARKS.md); the
contrastive loss falls from about 2*ln(2*128-1) = 11.1; accuracies on the 200 held-out photos
beat chance (10 %), fine-tuning beats the supervised baseline. The table is printed at the end;
rerunning finds every stage complete.
"""

from configs import default as default_lib


def get_config():
  config = default_lib.get_config()
  config.name = 'demo'
  config.data.dataset = 'demo'  # 1,000 train / 200 test photos shipped in simclr_jax/demo_data.
  config.data.image_size = 32
  config.data.color_jitter_strength = 0.5  # CIFAR recipe.
  config.data.use_blur = False
  config.data.shuffle_buffer_multiplier = 10
  config.model.depth = 18
  config.model.blocks_per_stage = (1, 1, 1, 1)  # Tiny: one basic block per group.
  config.model.width_multiplier = 0.25  # 16..128 channels, about 0.3M parameters.
  config.optim.optimizer = 'lars'
  config.optim.learning_rate = 1.0  # CIFAR recipe (linear scaling: 0.5 at batch 128).
  config.optim.weight_decay = 1e-4
  config.optim.warmup_epochs = 2.0
  config.train.global_batch_size = 128
  config.train.train_epochs = 24
  config.train.temperature = 0.5
  config.train.log_every_steps = 10
  config.train.checkpoint_every_steps = 50
  config.train.eval_batch_size = 200
  config.stages = ('pretrain', 'finetune', 'distill', 'supervised')
  config.knn.k = 50  # 1,000-image memory bank.

  config.finetune.label_fraction = 0.1  # 10 photos per class.
  config.finetune.optim.learning_rate = 0.02  # sqrt scaling: 0.13 at batch 40.
  config.finetune.train.global_batch_size = 40  # Batches divide among 1, 2, 4 or 8 devices.
  config.finetune.train.train_epochs = 40

  config.supervised.optim.learning_rate = 0.2  # linear scaling: 0.03 at batch 40.
  config.supervised.train.global_batch_size = 40
  config.supervised.train.train_epochs = 40

  config.distill.student_init_from = 'pretrain'  # Self-distillation from the pretrained encoder.
  config.distill.optim.learning_rate = 0.2
  config.distill.optim.warmup_epochs = 1.0
  config.distill.train.global_batch_size = 128
  config.distill.train.train_epochs = 8
  return config
