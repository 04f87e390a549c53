#!/usr/bin/env bash
# Runs a simclr_jax config on every host of a Cloud TPU VM pod slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/r152_3x.py gs://BUCKET/simclr/r152_3x [--config.x=y ...]
#
# Copies this checkout to every worker, installs it with the TPU extra, and starts the same
# command on all hosts; jax.distributed.initialize() finds the pod topology by itself.
# Preemptible slices: rerun the same command after a preemption and training resumes from the
# newest checkpoint in the workdir.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
tpu_name=$1 zone=$2 config=$3 workdir=$4
shift 4
repo=$(cd "$(dirname "$0")/.." && pwd)

gcloud compute tpus tpu-vm scp --recurse --zone="$zone" --worker=all \
  "$repo" "$tpu_name":~/simclr_jax_src
gcloud compute tpus tpu-vm ssh "$tpu_name" --zone="$zone" --worker=all --command="
  set -e
  cd ~/simclr_jax_src
  python3 -m venv ~/simclr_venv && . ~/simclr_venv/bin/activate
  pip install -q -e '.[tpu]'
  nohup python -m simclr_jax.main --config=$config --workdir=$workdir \
    --config.distributed.initialize=True $* > ~/simclr_train.log 2>&1 &
  echo started on \$(hostname)
"
echo "Logs: gcloud compute tpus tpu-vm ssh $tpu_name --zone=$zone --worker=0 --command='tail -f ~/simclr_train.log'"
echo "TensorBoard: tensorboard --logdir $workdir"
