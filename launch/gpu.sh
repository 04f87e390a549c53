#!/usr/bin/env bash
# Runs a simclr_jax config on one GPU host or several: one JAX process per host, all local GPUs.
#
#   launch/gpu.sh [options] CONFIG WORKDIR [HOST ...] [--config.field=value ...]
#
#   HOST ...        the machines; process i runs on the i-th, the first is the coordinator.
#                   None: this machine, one plain process (no jax.distributed).
#   --port=P        coordinator port on the first host (default 12355)
#   --repo=DIR      this checkout's path on every host (default: its path here; a shared
#                   filesystem or the same path everywhere)
#   --python=PATH   Python with simclr_jax installed, on every host (default: DIR/.venv/bin/python)
#   --log-dir=DIR   process i's output goes to DIR/process_i.log here (default /tmp/simclr_gpu_logs)
#   --dry-run       print every command instead of running it
#
# Every host needs the checkout installed with the cuda extra (python3 -m venv .venv &&
# .venv/bin/pip install -e '.[cuda]'); benchmarks/device_check.py checks one host.
#
# Each process runs, from the checkout (remote hosts through ssh, this machine directly):
#   python -m simclr_jax.main --config=CONFIG --workdir=WORKDIR \
#     --config.distributed.initialize=True --config.distributed.coordinator_address=HOST0:PORT \
#     --config.distributed.num_processes=N --config.distributed.process_id=i
# WORKDIR must be one directory that every host sees (NFS, or gs://). The script waits for all
# processes and fails if one does. After a failure or preemption, run the same command again:
# training resumes from the newest checkpoint in WORKDIR.
set -euo pipefail

usage() {
  echo "usage: $0 [--port=P] [--repo=DIR] [--python=PATH] [--log-dir=DIR] [--dry-run]" \
    "CONFIG WORKDIR [HOST ...] [--config.field=value ...]" >&2
  exit 2
}

port=12355 repo=$(cd "$(dirname "$0")/.." && pwd) python='' log_dir=/tmp/simclr_gpu_logs dry_run=0
positional=() overrides=()
for arg in "$@"; do
  case $arg in
    --port=*) port=${arg#*=} ;;
    --repo=*) repo=${arg#*=} ;;
    --python=*) python=${arg#*=} ;;
    --log-dir=*) log_dir=${arg#*=} ;;
    --dry-run) dry_run=1 ;;
    --config.*) overrides+=("$arg") ;;
    -h|--help) usage ;;
    -*) echo "$0: unknown option $arg" >&2; usage ;;
    *) positional+=("$arg") ;;
  esac
done
[ ${#positional[@]} -ge 2 ] || usage
config=${positional[0]} workdir=${positional[1]}
hosts=("${positional[@]:2}")
python=${python:-$repo/.venv/bin/python}
if ! [[ $port =~ ^[0-9]+$ ]]; then
  echo "$0: --port=$port is not a number; pass e.g. --port=12355" >&2
  exit 2
fi

is_local() {
  [[ $1 == localhost || $1 == 127.0.0.1 || $1 == "$(hostname)" ||
     $1 == "$(hostname -f 2>/dev/null)" ]]
}

# Quotes a word for a shell command line (so printed commands can be pasted).
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# The command line of one process; extra arguments are appended after the config overrides.
main_command() {
  local words=(cd "$repo" '&&' "$python" -m simclr_jax.main --config="$config" --workdir="$workdir"
               ${overrides[@]+"${overrides[@]}"} "$@")
  local word line=''
  for word in "${words[@]}"; do
    if [ "$word" = '&&' ]; then line+=' &&'; else line+=" $(quote "$word")"; fi
  done
  echo "${line# }"
}

# Sets `launch` to the command that runs $2 on host $1: bash here, ssh elsewhere.
set_launch() {
  if is_local "$1"; then launch=(bash -c "$2"); else launch=(ssh -o BatchMode=yes "$1" "$2"); fi
}

show_launch() {
  local word line=''
  for word in "${launch[@]}"; do line+=" $(quote "$word")"; done
  echo "${line# }"
}

num_processes=${#hosts[@]}
if [ "$num_processes" -le 1 ]; then
  set_launch "${hosts[0]:-localhost}" "$(main_command)"
  if [ "$dry_run" = 1 ]; then show_launch; exit 0; fi
  exec "${launch[@]}"
fi

coordinator=${hosts[0]}
is_local "$coordinator" && coordinator=$(hostname -f 2>/dev/null || hostname)
[ "$dry_run" = 1 ] || mkdir -p "$log_dir"
pids=()
for i in "${!hosts[@]}"; do
  host=${hosts[$i]}
  command=$(main_command --config.distributed.initialize=True \
    --config.distributed.coordinator_address="$coordinator:$port" \
    --config.distributed.num_processes="$num_processes" --config.distributed.process_id="$i")
  set_launch "$host" "$command"
  log=$log_dir/process_$i.log
  if [ "$dry_run" = 1 ]; then
    echo "$(show_launch) > $(quote "$log") 2>&1 &"
  else
    "${launch[@]}" > "$log" 2>&1 &
    pids+=($!)
    echo "process $i on $host: pid $!, log $log"
  fi
done
[ "$dry_run" = 1 ] && exit 0

failed=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "process $i on ${hosts[$i]} failed; see $log_dir/process_$i.log" >&2
    failed=1
  fi
done
exit $failed
