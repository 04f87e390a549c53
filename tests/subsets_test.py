"""Labelled subsets: class-balanced, deterministic, the requested size."""

import numpy as np
import pytest

from simclr_jax.data import sources, subsets


def _labels():
  rng = np.random.default_rng(0)
  return rng.integers(0, 5, size=1000)


def test_fraction_is_balanced_and_sized():
  labels = _labels()
  chosen = subsets.balanced_subset(labels, seed=3, fraction=0.1)
  for label in range(5):
    members = np.sum(labels == label)
    assert np.sum(labels[chosen] == label) == max(1, round(0.1 * members))
  assert np.all(np.diff(chosen) > 0)  # Sorted, unique.


def test_per_class_count_and_determinism():
  labels = _labels()
  a = subsets.balanced_subset(labels, seed=1, per_class=7)
  b = subsets.balanced_subset(labels, seed=1, per_class=7)
  c = subsets.balanced_subset(labels, seed=2, per_class=7)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert np.bincount(labels[a]).tolist() == [7] * 5


def test_unlabelled_examples_are_never_chosen():
  labels = np.array([-1, 0, 0, 1, 1, -1])
  chosen = subsets.balanced_subset(labels, seed=0, fraction=1.0)
  assert chosen.tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize('fraction', [0.0, 1.5, -0.1])
def test_bad_fraction_names_the_field(fraction):
  with pytest.raises(ValueError, match='finetune.label_fraction'):
    subsets.balanced_subset(_labels(), seed=0, fraction=fraction)


def test_restrict_on_demo_folder_and_host_shares():
  labels = subsets.split_labels('demo', 'train')
  assert len(labels) == 1000 and np.bincount(labels).tolist() == [100] * 10
  chosen = subsets.balanced_subset(labels, seed=0, per_class=3)
  seen = []
  for host in range(2):
    source = sources.load('demo', 'train', process_index=host, process_count=2)
    restricted = source.restrict(chosen)
    examples = list(restricted.dataset.as_numpy_iterator())
    assert len(examples) == restricted.num_host_examples
    assert int(restricted.dataset.cardinality()) == restricted.num_host_examples
    seen += [int(e['index']) for e in examples]
    assert all(e['label'] == labels[e['index']] for e in examples)
  assert sorted(seen) == chosen.tolist()  # Hosts together hold exactly the subset.


def test_hide_labels_outside():
  source = sources.load('demo', 'test')
  kept = np.array([0, 5, 50])
  relabelled = source.hide_labels_outside(kept)
  labels = {int(e['index']): int(e['label']) for e in relabelled.dataset.as_numpy_iterator()}
  assert sorted(i for i, label in labels.items() if label >= 0) == kept.tolist()


def test_stage_subset_is_the_stage_declarations_rule():
  from configs import demo as demo_lib
  from simclr_jax import stages

  config = demo_lib.get_config()
  labels = np.repeat(np.arange(10), 20)  # 200 examples, 20 per class.
  drawn = subsets.finetune_subset(config, labels)
  assert len(drawn) == 20  # label_fraction 0.1.
  calls = []
  split_labels = lambda: calls.append(1) or labels
  examples, labelled = subsets.stage_subset(config, stages.get('finetune'), split_labels)
  assert examples.tolist() == drawn.tolist() and labelled is None
  assert subsets.stage_subset(config, stages.get('pretrain'), split_labels) == (None, None)
  config.distill.label_weight = 0.0  # Distillation without the labelled term sees no label.
  assert subsets.stage_subset(config, stages.get('distill'), split_labels)[1].tolist() == []
  config.distill.label_weight = 0.5
  examples, labelled = subsets.stage_subset(config, stages.get('distill'), split_labels)
  assert examples is None and labelled.tolist() == drawn.tolist()
  assert len(calls) == 2
  config.finetune.dataset = 'imagenet2012_subset/10pct'  # Official: a subset already.
  assert subsets.stage_subset(config, stages.get('finetune'), split_labels) == (None, None)
  assert subsets.stage_subset(config, stages.get('distill'), split_labels)[1].tolist() == []
  assert len(calls) == 2  # Labels are read only when a subset is drawn here.
