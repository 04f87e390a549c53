"""Evaluation: exact top-1/top-5 over a split, encoder features, and the kNN monitor.

Eval batches hold canvases (pipeline.make_eval_dataset); each step builds the eval view on the
device first (`view`, from views.make_eval_view). Batches are padded to a fixed size with
`mask` = 0, so sums over masked examples are exact whatever the split size, on any number of hosts.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from simclr_jax import sharding, stages
from simclr_jax.data import input as data_input


def make_eval_step(model, mesh, view):
  """jit(shard_map): global sums of top-1/top-5 hits and the example count of one batch."""
  evaluate = stages.eval_fn(model)

  def step(params, batch_stats, batch):
    return evaluate(params, batch_stats, {**batch, 'image': view(batch)})

  sharded = jax.shard_map(
    step, mesh=mesh, in_specs=(P(), P(), P(sharding.DATA_AXIS)), out_specs=P()
  )
  return jax.jit(sharded)


def classification_accuracy(eval_step, params, batch_stats, eval_data, mesh) -> dict[str, Any]:
  """Top-1/top-5 of the supervised head over the whole split (padding masked out)."""
  totals = {'top1': 0.0, 'top5': 0.0, 'count': 0.0}
  for host_batch in eval_data.batches():
    batch = sharding.global_batch_from_host(mesh, host_batch)
    for key, value in jax.device_get(eval_step(params, batch_stats, batch)).items():
      totals[key] += float(value)
  count = max(totals['count'], 1.0)
  return {
    'top1': totals['top1'] / count,
    'top5': totals['top5'] / count,
    'num_examples': int(totals['count']),
  }


def make_feature_step(model, mesh, view, output: str = 'features'):
  """jit(shard_map): the model's `output` (encoder features by default) in inference mode, of
  the eval views of a batch of canvases ({'image', 'size'})."""

  def features(params, batch_stats, canvases):
    out = model.apply({'params': params, 'batch_stats': batch_stats}, view(canvases), train=False)
    return out[output].astype(jnp.float32)

  sharded = jax.shard_map(
    features, mesh=mesh, in_specs=(P(), P(), P(sharding.DATA_AXIS)),
    out_specs=P(sharding.DATA_AXIS),
  )
  return jax.jit(sharded)


def extract_features(
  feature_step, params, batch_stats, eval_data: data_input.EvalData, mesh
) -> tuple[np.ndarray, np.ndarray]:
  """(features [N, D] float32, labels [N]) of every example of the split, in split order.

  With a mesh over every process, each process feeds its share and all get every feature; with a
  mesh of one process's devices, that process alone extracts the examples it feeds.
  """
  features, labels, indices = [], [], []
  local = all(d.process_index == jax.process_index() for d in mesh.devices.flat)
  for host_batch in eval_data.batches():
    batch = sharding.global_batch_from_host(mesh, host_batch)
    out = feature_step(params, batch_stats, {'image': batch['image'], 'size': batch['size']})
    outputs = {'features': out, 'label': batch['label'], 'index': batch['index'],
               'mask': batch['mask']}
    # A mesh of this process's devices only (the plots): nothing to gather from other hosts.
    gathered = jax.device_get(outputs) if local else multihost_utils.process_allgather(
      outputs, tiled=True)
    keep = gathered['mask'] > 0
    features.append(np.asarray(gathered['features'])[keep])
    labels.append(np.asarray(gathered['label'])[keep])
    indices.append(np.asarray(gathered['index'])[keep])
  order = np.argsort(np.concatenate(indices), kind='stable')
  return np.concatenate(features)[order], np.concatenate(labels)[order]


@jax.jit
def _normalize(x: jax.Array) -> jax.Array:
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def knn_predict(
  train_features: np.ndarray,
  train_labels: np.ndarray,
  test_features: np.ndarray,
  *,
  num_classes: int,
  k: int = 200,
  temperature: float = 0.1,
  chunk_size: int = 512,
) -> np.ndarray:
  """Weighted kNN class predictions: cosine similarity, top k, vote weight exp(sim / tau).

  The monitor of InstDisc (Wu et al., 2018) used by most SimCLR reproductions.
  """
  bank = _normalize(jnp.asarray(train_features, jnp.float32))  # [N_train, D]
  bank_labels = jnp.asarray(train_labels, jnp.int32)
  k = min(k, bank.shape[0])

  @jax.jit
  def predict(queries):
    similarity = _normalize(queries) @ bank.T  # [chunk, N_train]
    top_similarity, top_index = jax.lax.top_k(similarity, k)
    weights = jnp.exp(top_similarity / temperature)
    votes = jax.nn.one_hot(bank_labels[top_index], num_classes) * weights[..., None]
    return jnp.argmax(jnp.sum(votes, axis=1), axis=-1)

  predictions = []
  for start in range(0, len(test_features), chunk_size):
    chunk = np.asarray(test_features[start : start + chunk_size], np.float32)
    padded = np.zeros((chunk_size, chunk.shape[1]), np.float32)
    padded[: len(chunk)] = chunk  # One compiled shape for every chunk.
    predictions.append(np.asarray(predict(padded))[: len(chunk)])
  return np.concatenate(predictions) if predictions else np.zeros([0], np.int32)


def knn_accuracy(
  feature_step, params, batch_stats, train_data, test_data, mesh, *, num_classes, k, temperature
) -> float:
  """kNN top-1 of encoder features: train split as memory bank, eval split as queries."""
  train_features, train_labels = extract_features(
    feature_step, params, batch_stats, train_data, mesh)
  test_features, test_labels = extract_features(feature_step, params, batch_stats, test_data, mesh)
  labelled = train_labels >= 0
  predictions = knn_predict(
    train_features[labelled], train_labels[labelled], test_features,
    num_classes=num_classes, k=k, temperature=temperature,
  )
  return float(np.mean(predictions == test_labels)) if len(test_labels) else 0.0
