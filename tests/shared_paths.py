"""Where the project's shared data lives: $SIMCLR_SHARED_DIR, or ../shared beside the checkout."""

import os
import pathlib

_REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get('SIMCLR_SHARED_DIR', _REPO.parent / 'shared'))
CIFAR10 = SHARED / 'data' / 'cifar10'
OFFICIAL_TF2_FIXTURES = SHARED / 'fixtures' / 'official_tf2'
