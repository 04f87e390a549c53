#!/usr/bin/env bash
# Runs a simclr_jax config on every worker of a Cloud TPU VM (one host) or pod slice (many).
#
#   launch/tpu_vm.sh [options] TPU_NAME ZONE CONFIG gs://BUCKET/WORKDIR [--config.field=value ...]
#
#   --create               create the TPU VM first (gcloud compute tpus tpu-vm create)
#   --accelerator-type=T   with --create: v4-8 (default), v4-32, v5litepod-16, v5p-64, ...
#   --version=V            with --create: TPU software version (default tpu-ubuntu2204-base)
#   --spot                 with --create: a Spot (preemptible) slice
#   --project=P            gcloud project (default: gcloud's configured project)
#   --skip-install         do not copy and install the checkout (already on the workers)
#   --skip-plan            do not run the pre-flight plan
#   --replan               compile the plan again even when a plan for the same config, slice,
#                          jax, libtpu and code exists (workdirs/plans/; otherwise reused)
#   --dry-run              print every command instead of running it (the plan still runs)
#
# Pre-flight: the bucket of WORKDIR must exist and be writable from this machine (checked with a
# probe object, except in a dry run). With --create or an explicit --accelerator-type, the config
# (with its overrides) is
# first compiled for that slice on this machine (python -m simclr_jax.plan, needs the [tpu]
# extra; PYTHON=... picks the interpreter). A config that does not fit is refused, with the plan's
# one-line reason, before anything is created or started. A plan made before for the same config,
# slice, jax, libtpu and code is reused (seconds instead of a compile); the plan is also copied to
# WORKDIR/plan.json, where the run compares its measured step time with the plan's bound.
#
# Steps: [create] -> pack this checkout (without .git, .venv, workdirs) -> scp it to every
# worker -> install it with the [tpu] extra in ~/simclr_venv -> start the same command on all
# workers, in the background, logging to ~/simclr_train.log:
#   python -m simclr_jax.main --config=CONFIG --workdir=WORKDIR --config.distributed.initialize=True
# jax.distributed.initialize() finds the slice topology by itself. WORKDIR must be on GCS: every
# worker writes the same checkpoints. After a preemption, run the same command again (with
# --create if the slice was deleted): training resumes from the newest checkpoint in WORKDIR.
set -euo pipefail

usage() {
  echo "usage: $0 [--create] [--accelerator-type=T] [--version=V] [--spot] [--project=P]" \
    "[--skip-install] [--skip-plan] [--replan] [--dry-run] TPU_NAME ZONE CONFIG gs://BUCKET/WORKDIR" \
    "[--config.field=value ...]" >&2
  exit 2
}

create=0 accelerator_type=v4-8 version=tpu-ubuntu2204-base spot=0 project='' install=1 dry_run=0
plan=1 accelerator_given=0 replan=()
positional=() overrides=()
for arg in "$@"; do
  case $arg in
    --create) create=1 ;;
    --accelerator-type=*) accelerator_type=${arg#*=} accelerator_given=1 ;;
    --version=*) version=${arg#*=} ;;
    --spot) spot=1 ;;
    --project=*) project=${arg#*=} ;;
    --skip-install) install=0 ;;
    --skip-plan) plan=0 ;;
    --replan) replan=(--replan) ;;
    --dry-run) dry_run=1 ;;
    --config.*) overrides+=("$arg") ;;
    -h|--help) usage ;;
    -*) echo "$0: unknown option $arg" >&2; usage ;;
    *) positional+=("$arg") ;;
  esac
done
[ ${#positional[@]} -eq 4 ] || usage
tpu_name=${positional[0]} zone=${positional[1]} config=${positional[2]} workdir=${positional[3]}
if [[ $workdir != gs://* ]]; then
  echo "$0: WORKDIR=$workdir is not a gs:// path; every worker must write the same checkpoints," \
    "so use gs://BUCKET/PATH" >&2
  exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -f "$repo/$config" ]; then
  echo "$0: CONFIG=$config is not a file of this checkout ($repo); pass e.g. configs/r50_1x.py" >&2
  exit 2
fi

# Pre-flight 1: the bucket exists and this machine can write to it (a probe object is written and
# deleted), before anything is compiled or created.
if [ "$dry_run" = 1 ]; then
  echo "Bucket check skipped in a dry run (it writes a probe object into $workdir)." >&2
elif ! (cd "$repo" && "${PYTHON:-python3}" -m simclr_jax.fs --check-writable="$workdir") >&2; then
  echo "$0: refused: WORKDIR=$workdir cannot be written (the line above says why)" >&2
  exit 1
fi

# Pre-flight 2: compile every stage for the slice here; refuse what does not fit.
if [ "$plan" = 1 ] && { [ "$create" = 1 ] || [ "$accelerator_given" = 1 ]; }; then
  echo "Pre-flight: compiling $config for $accelerator_type (python -m simclr_jax.plan)..." >&2
  plan_log=$(mktemp)
  plan_workdir=()
  [ "$dry_run" = 1 ] || plan_workdir=(--workdir="$workdir")  # The run compares its step time.
  if ! (cd "$repo" && "${PYTHON:-python3}" -m simclr_jax.plan --config="$config" \
      --accelerator-type="$accelerator_type" ${replan[@]+"${replan[@]}"} \
      ${plan_workdir[@]+"${plan_workdir[@]}"} ${overrides[@]+"${overrides[@]}"}) >"$plan_log" 2>&1
  then
    grep -v '^error: ' "$plan_log" >&2 || true
    reason=$(grep '^error: ' "$plan_log" | tail -1)
    [ -n "$reason" ] || reason=$(tail -1 "$plan_log")
    rm -f "$plan_log"
    echo "$0: refused by the pre-flight plan: ${reason#error: }" \
      "(fix the config, or pass --skip-plan to launch anyway)" >&2
    exit 1
  fi
  cat "$plan_log" >&2
  rm -f "$plan_log"
elif [ "$plan" = 1 ]; then
  echo "Pre-flight skipped: pass --accelerator-type=T to check that $config fits the slice." >&2
fi

# Prints a command (quoted so that it can be pasted) or runs it.
run() {
  if [ "$dry_run" = 1 ]; then
    local word out=()
    for word in "$@"; do
      if [[ $word =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then
        out+=("$word")
      else
        out+=("'${word//\'/\'\\\'\'}'")
      fi
    done
    echo "${out[*]}"
  else
    "$@"
  fi
}

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[ -n "$project" ] && where+=(--project="$project")

if [ "$create" = 1 ]; then
  create_args=(--accelerator-type="$accelerator_type" --version="$version")
  [ "$spot" = 1 ] && create_args+=(--spot)
  run "${gcloud_tpu[@]}" create "$tpu_name" "${where[@]}" "${create_args[@]}"
fi

if [ "$install" = 1 ]; then
  tarball=${TMPDIR:-/tmp}/simclr_jax_src.tar.gz
  run tar -czf "$tarball" --exclude=./.git --exclude=./.venv --exclude=./workdirs \
    --exclude=__pycache__ -C "$repo" .
  run "${gcloud_tpu[@]}" scp "$tarball" "$tpu_name":simclr_jax_src.tar.gz "${where[@]}" --worker=all
  run "${gcloud_tpu[@]}" ssh "$tpu_name" "${where[@]}" --worker=all --command="set -e; \
rm -rf ~/simclr_jax_src && mkdir -p ~/simclr_jax_src; \
tar -xzf ~/simclr_jax_src.tar.gz -C ~/simclr_jax_src; python3 -m venv ~/simclr_venv; \
cd ~/simclr_jax_src && ~/simclr_venv/bin/pip install -q -e '.[tpu]'"
fi

train_args=$(printf ' %q' --config="$config" --workdir="$workdir" \
  --config.distributed.initialize=True ${overrides[@]+"${overrides[@]}"})
# A job still running on a worker is not started twice (its pid is in ~/simclr_train.pid).
run "${gcloud_tpu[@]}" ssh "$tpu_name" "${where[@]}" --worker=all --command="cd ~/simclr_jax_src; \
if [ -f ~/simclr_train.pid ] && kill -0 \$(cat ~/simclr_train.pid) 2>/dev/null; then \
echo \"already running on \$(hostname)\"; exit 1; fi; \
nohup ~/simclr_venv/bin/python -m simclr_jax.main$train_args > ~/simclr_train.log 2>&1 & \
echo \$! > ~/simclr_train.pid; echo \"started on \$(hostname)\""

echo "Logs:        ${gcloud_tpu[*]} ssh $tpu_name ${where[*]} --worker=0" \
  "--command='tail -f ~/simclr_train.log'"
echo "TensorBoard: tensorboard --logdir $workdir"
echo "Delete:      ${gcloud_tpu[*]} delete $tpu_name ${where[*]}"
