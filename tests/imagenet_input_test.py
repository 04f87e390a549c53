"""ImageNet-shaped input on a pod, on a locally written fake ImageNet (tests/fake_imagenet.py).

Checked: the split order is the shard files' record order (read independently with tf.train
.Example); 2 and 4 processes each read 1/P of the dataset's bytes (within one shard) and
together every example once; a mid-epoch resume reads at most one window (shuffle buffer plus
one shard) and continues the uninterrupted stream exactly; the host's memory levels off over six
epochs of the ImageNet configs' data settings; the cache rule never caches decoded ImageNet.
Bytes read are the kernel's count (/proc/self/io rchar), not the code's own bookkeeping.
"""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

import fake_imagenet
from simclr_jax.data import pipeline, reading, sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TRAIN, SHARDS = 320, 16  # 20 records (~1.2 MB) per shard file.


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('tfds'))
  fake_imagenet.write(root, num_train=NUM_TRAIN, num_validation=32, shards=SHARDS)
  return root


def _load(data_dir, **kwargs):
  return sources.load(fake_imagenet.NAME, 'train', data_dir=data_dir, decode=False, **kwargs)


def test_split_order_is_the_shard_files_record_order(data_dir):
  files = fake_imagenet.shard_files(data_dir)
  assert len(files) == SHARDS
  spec = {'label': tf.io.FixedLenFeature([], tf.int64),
          'image': tf.io.FixedLenFeature([], tf.string)}
  expected = [tf.io.parse_single_example(record, spec) for record in tf.data.TFRecordDataset(files)]
  source = _load(data_dir)
  assert source.shards is not None and source.num_examples == NUM_TRAIN
  examples = list(source.dataset.as_numpy_iterator())
  assert [int(x['index']) for x in examples] == list(range(NUM_TRAIN))
  assert [int(x['label']) for x in examples] == [int(x['label']) for x in expected]
  assert all(x['encoded'] == y['image'].numpy() for x, y in zip(examples, expected))
  decoded = sources.load(fake_imagenet.NAME, 'train', data_dir=data_dir, max_examples=3)
  assert [x['image'].shape for x in decoded.dataset.as_numpy_iterator()] == [
    tf.io.decode_jpeg(y['image']).shape for y in expected[:3]]


# ----------------------------------------------------------------------------- reads per process

_DRIVER = r'''
import itertools, json, sys
from simclr_jax.data import sources

def rchar():
  with open('/proc/self/io') as f:
    return int(next(line for line in f if line.startswith('rchar')).split()[1])

data_dir, index, count, start, take, buffer = sys.argv[1], *map(int, sys.argv[2:])
source = sources.load('fake_imagenet', 'train', data_dir=data_dir, decode=False,
                      process_index=index, process_count=count)
before = rchar()  # Listing done (dataset_info.json): what follows is reading the data.
stream = source.epochs(seed=7, shuffle_buffer=buffer, start_example=start, process_index=index)
examples = list(itertools.islice(stream.as_numpy_iterator(), take or source.num_host_examples))
after = rchar()
print(json.dumps({'indices': [int(x['index']) for x in examples],
                  'epochs': [int(x['epoch']) for x in examples],
                  'host_indices': source.host_indices.tolist(), 'bytes': after - before}))
'''


def _drive(data_dir, index, count, start=0, take=0, buffer=30):
  """Runs the driver as process `index` of `count`; returns it (not yet waited for)."""
  env = {**os.environ, 'PYTHONPATH': REPO, 'TF_CPP_MIN_LOG_LEVEL': '3'}
  return subprocess.Popen(
    [sys.executable, '-c', _DRIVER, data_dir, str(index), str(count), str(start), str(take),
     str(buffer)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def _result(process) -> dict:
  out, err = process.communicate(timeout=300)
  assert process.returncode == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1])


def _sizes(data_dir) -> list[int]:
  return [os.path.getsize(f) for f in fake_imagenet.shard_files(data_dir)]


@pytest.mark.parametrize('count', [2, 4])
def test_each_process_reads_only_its_share_of_the_files(data_dir, count):
  results = [_result(p) for p in [_drive(data_dir, i, count) for i in range(count)]]
  sizes = _sizes(data_dir)
  total, largest = sum(sizes), max(sizes)
  seen = []
  for result in results:
    assert sorted(result['indices']) == result['host_indices']  # One epoch: each example once.
    seen += result['indices']
    # The kernel's count of bytes read: 1/P of the dataset, give or take one shard.
    assert abs(result['bytes'] - total / count) <= largest + 64 * 1024, (result['bytes'], total)
  assert sorted(seen) == list(range(NUM_TRAIN))  # Disjoint and covering.


def test_mid_epoch_resume_reads_one_window_and_continues_the_stream(data_dir):
  start, take = 410, 20  # Epoch 1, examples 90-109: all in the epoch's third window.
  full = _drive(data_dir, 0, 1, start=0, take=start + take)
  resumed = _drive(data_dir, 0, 1, start=start, take=take)
  full, resumed = _result(full), _result(resumed)
  assert resumed['indices'] == full['indices'][start:]  # Examples and order exact.
  assert resumed['epochs'] == full['epochs'][start:] == [1] * take
  # A window is ceil(shuffle buffer 30 / 20 records) = 2 shards (the buffer plus at most one
  # shard): the resume reads that window and nothing before it.
  assert resumed['bytes'] <= 2 * max(_sizes(data_dir)) + 64 * 1024, resumed['bytes']
  assert full['bytes'] > 10 * resumed['bytes']  # Reading up to there costs 1.3 epochs.


def test_the_window_shuffle_mixes_shards_and_changes_every_epoch(data_dir):
  source = _load(data_dir)
  stream = source.epochs(seed=0, shuffle_buffer=60, process_index=0)
  indices = [int(x['index']) for x in stream.take(2 * NUM_TRAIN).as_numpy_iterator()]
  first, second = indices[:NUM_TRAIN], indices[NUM_TRAIN:]
  assert sorted(first) == sorted(second) == list(range(NUM_TRAIN))
  assert first != second
  shards_of_first_60 = {i // 20 for i in first[:60]}
  assert len(shards_of_first_60) == 3  # A window of 3 shards, fully mixed:
  assert len({i // 20 for i in first[:20]}) == 3  # the first 20 already come from all three.


# ----------------------------------------------------------------------------- memory and cache

_RSS = r'''
def rss_mb():
  with open('/proc/self/status') as f:
    return int(next(l for l in f if l.startswith('VmRSS')).split()[1]) / 1024
'''

_MEMORY_DRIVER = _RSS + r'''
import json, resource, sys
from configs import r50_1x
from simclr_jax import stages
from simclr_jax.data import input as data_input

config = r50_1x.get_config()
config.data.dataset, config.data.tfds_data_dir = 'fake_imagenet', sys.argv[1]
config.data.image_size = int(sys.argv[2])
config.train.global_batch_size = 32
data = data_input.make_train_data(config, stages.get('pretrain'), None)
batches = data.batches(0)
steps_per_epoch = data.num_examples // 32
marks = []
for epoch in range(6):
  for _ in range(steps_per_epoch):
    next(batches)
  marks.append(rss_mb())
print(json.dumps({'rss_mb': marks, 'cache': config.data.cache,
                  'canvas_size': config.data.canvas_size}))
'''


@pytest.mark.slow
def test_host_memory_stays_bounded_across_epochs_with_the_imagenet_settings(data_dir):
  env = {**os.environ, 'PYTHONPATH': REPO, 'TF_CPP_MIN_LOG_LEVEL': '3'}
  run = subprocess.run([sys.executable, '-c', _MEMORY_DRIVER, data_dir, '96'], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads(run.stdout.strip().splitlines()[-1])
  assert not result['cache'] and result['canvas_size'] == 512
  late = result['rss_mb'][3:]
  # tf.data's autotuned buffers grow over the first epochs, then nothing accumulates: caching the
  # decoded share would add ~130 MB per epoch here (320 photos of ~400 x 350 px).
  assert max(late) - min(late) < 200, result['rss_mb']


_CACHE_MEMORY_DRIVER = _RSS + r'''
import json, sys
from simclr_jax.data import pipeline, reading, sources

reading.host_ram_bytes = lambda: 10**12  # Any cache fits.
source = sources.load('fake_imagenet', 'train', data_dir=sys.argv[1]).map(pipeline.place(512))
assert source.cache_kind(True) == 'decoded'
stream = source.epochs(seed=0, shuffle_buffer=8, cache=True).as_numpy_iterator()
before, marks = rss_mb(), []
for epoch in range(3):
  for _ in range(source.num_host_examples):
    next(stream)
  marks.append(rss_mb())
print(json.dumps({'before': before, 'marks': marks}))
'''


@pytest.mark.slow
def test_a_decoded_cache_is_permuted_without_a_second_copy(data_dir):
  """Every epoch shuffles the whole cached share: the buffer must reference the cached canvases,
  not copy them (measured: +292 MB for 240 MB of canvases, flat across epochs)."""
  env = {**os.environ, 'PYTHONPATH': REPO, 'TF_CPP_MIN_LOG_LEVEL': '3'}
  run = subprocess.run([sys.executable, '-c', _CACHE_MEMORY_DRIVER, data_dir], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads(run.stdout.strip().splitlines()[-1])
  cache_mb = NUM_TRAIN * 512 * 512 * 3 / 2**20  # 240 MB.
  assert result['marks'][0] - result['before'] < 1.5 * cache_mb, result  # A copy: > 2x.
  assert max(result['marks']) - min(result['marks']) < 50, result


def test_cache_rule_caches_what_fits_and_logs_it(data_dir, monkeypatch):
  on_canvas = lambda source, side=32: source.map(pipeline.place(side))
  imagenet = sources.load(fake_imagenet.NAME, 'train', data_dir=data_dir)
  assert imagenet.encoded_bytes > 0
  assert imagenet.cache_kind(True) == 'encoded'  # Decoded JPEGs of unknown size: never cached.
  monkeypatch.setattr(reading, 'host_ram_bytes', lambda: 4 * NUM_TRAIN * 512 * 512 * 3 - 4)
  assert on_canvas(imagenet, 512).cache_kind(True) == 'encoded'  # 512 px canvases do not fit.
  monkeypatch.setattr(reading, 'host_ram_bytes', lambda: 4 * NUM_TRAIN * 512 * 512 * 3)
  assert on_canvas(imagenet, 512).cache_kind(True) == 'decoded'
  demo = on_canvas(sources.load('demo', 'train'))
  decoded_bytes = 1000 * 32 * 32 * 3  # 1,000 canvases of 32 x 32.
  monkeypatch.setattr(reading, 'host_ram_bytes', lambda: 4 * decoded_bytes)
  assert demo.cache_kind(True) == 'decoded' and demo.cache_kind(False) == ''
  monkeypatch.setattr(reading, 'host_ram_bytes', lambda: 4 * demo.encoded_bytes - 4)
  assert demo.cache_kind(True) == ''  # Even the encoded bytes exceed a quarter of the RAM.
  monkeypatch.setattr(reading, 'host_ram_bytes', lambda: 4 * decoded_bytes - 4)
  assert demo.cache_kind(True) == 'encoded'
  # The stream is the same whatever the cache holds.
  kinds = {}
  for ram in (0, 4 * decoded_bytes - 4, 10 * decoded_bytes):
    monkeypatch.setattr(reading, 'host_ram_bytes', lambda ram=ram: ram)
    stream = demo.epochs(seed=1, shuffle_buffer=64, cache=True).take(50)
    kinds[demo.cache_kind(True)] = [(int(x['index']), x['image'].sum())
                                     for x in stream.as_numpy_iterator()]
  assert set(kinds) == {'', 'encoded', 'decoded'}
  assert kinds[''] == kinds['encoded'] == kinds['decoded']


def test_an_encoded_cache_is_shuffled_before_decoding(monkeypatch):
  """A cached share is fully permuted: the shuffle buffer holds all of it, so it must hold the
  cached (encoded) examples, not decoded canvases, which are what did not fit."""
  demo = sources.load('demo', 'train').map(pipeline.place(32))
  monkeypatch.setattr(reading, 'host_ram_bytes', lambda: 4 * 1000 * 32 * 32 * 3 - 4)
  assert demo.cache_kind(True) == 'encoded'
  decoded = []
  count = lambda: decoded.append(1) or 0
  counting = demo.map(lambda x: {**x, 'count': tf.py_function(count, [], tf.int32)})
  next(iter(counting.epochs(seed=0, shuffle_buffer=8, cache=True)))
  assert len(decoded) < 100, len(decoded)  # Not the 1,000 of the share.


def test_a_dataset_stored_as_array_record_is_refused_in_one_line(tmp_path):
  """tfds's as_dataset cannot read ArrayRecord files (only as_data_source can): refuse before
  any pipeline is built, naming the dataset and the rebuild command."""
  from simclr_jax.errors import ConfigError
  fake_imagenet.write(str(tmp_path), num_train=8, num_validation=2, shards=2,
                      file_format='array_record')
  with pytest.raises(ConfigError, match=r'data.dataset=.fake_imagenet. is stored as array_record '
                     r'.*--file_format=tfrecord') as error:
    sources.load(fake_imagenet.NAME, 'train', data_dir=str(tmp_path))
  assert '\n' not in str(error.value)
