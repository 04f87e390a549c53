#!/usr/bin/env bash
# Kept for existing instructions: the same as launch/tpu_vm.sh (copy, install and run a config on
# every worker of an existing TPU VM or pod slice); see that script for options (--create, ...).
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/r152_3x.py gs://BUCKET/simclr/r152_3x [--config.x=y ...]
exec "$(dirname "$0")/tpu_vm.sh" "$@"
