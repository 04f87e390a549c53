"""SimCLR and SimCLRv2 in JAX/Flax."""

import os

__version__ = '0.1.0'

# TensorFlow's GCS client caches an object's size for 5 s by default, but a run's objects are
# written by several hosts and by two clients (tensorstore writes the arrays and the lock): a
# cached size hides another writer's object, or cuts a read of its new version short. TF reads
# this when it is imported, so it is set here, before any module of the package imports it (a
# setting of the user's is kept).
os.environ.setdefault('GCS_STAT_CACHE_MAX_AGE', '0')
