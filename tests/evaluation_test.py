"""kNN monitor against a NumPy reference; features in split order across padded batches."""

import jax
import numpy as np

from simclr_jax import evaluation, sharding
from simclr_jax.data import input as data_input
from simclr_jax.data import views


def _numpy_knn(bank, bank_labels, queries, num_classes, k, temperature):
  bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  predictions = []
  for query in queries:
    similarity = bank @ query
    top = np.argsort(-similarity)[:k]
    votes = np.zeros(num_classes)
    for index in top:
      votes[bank_labels[index]] += np.exp(similarity[index] / temperature)
    predictions.append(np.argmax(votes))
  return np.array(predictions)


def test_knn_matches_numpy():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(4, 16))
  bank_labels = rng.integers(0, 4, size=300)
  bank = centers[bank_labels] + rng.normal(size=(300, 16))
  query_labels = rng.integers(0, 4, size=37)
  queries = centers[query_labels] + rng.normal(size=(37, 16))
  ours = evaluation.knn_predict(bank, bank_labels, queries, num_classes=4, k=20, temperature=0.1,
                                chunk_size=16)
  reference = _numpy_knn(bank, bank_labels, queries, 4, 20, 0.1)
  np.testing.assert_array_equal(ours, reference)
  assert np.mean(ours == query_labels) > 0.5  # Clusters are separable: far above chance.


def test_knn_with_k_larger_than_bank():
  bank = np.eye(3, dtype=np.float32)
  predictions = evaluation.knn_predict(bank, np.array([0, 1, 2]), bank, num_classes=3, k=200)
  assert predictions.tolist() == [0, 1, 2]


class _Identity:
  """A stand-in model whose 'features' are the mean pixel per channel."""

  def apply(self, variables, images, train):
    del variables, train
    return {'features': images.mean(axis=(1, 2))}


def test_extract_features_in_split_order_without_padding():
  from configs import demo as demo_lib

  config = demo_lib.get_config()
  config.train.eval_batch_size = 64  # 200 test images: 4 batches, the last one padded.
  mesh = sharding.make_mesh()
  step = evaluation.make_feature_step(_Identity(), mesh, views.make_eval_view(config))
  data = data_input.make_eval_data(config)
  features, labels = evaluation.extract_features(step, {}, {}, data, mesh)
  assert features.shape == (200, 3) and labels.shape == (200,)
  view = views.make_eval_view(config)
  expected = [np.asarray(view(b)).mean(axis=(1, 2))[b['mask'] > 0] for b in data.batches()]
  np.testing.assert_allclose(features, np.concatenate(expected), rtol=1e-4)
  assert np.bincount(labels).tolist() == [20] * 10
  assert jax.device_count() == 8
