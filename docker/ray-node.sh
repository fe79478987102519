#!/usr/bin/env bash
# Start one Ray node in the foreground (Compose runs it under `init: true`).
#   ray-node head             GCS, dashboard and job API; no GPUs, so GPU trials go to the workers
#   ray-node worker ADDRESS   a worker that joins the head at ADDRESS (host:port)
#   ray-node health [head]    exit 0 when this node's raylet (and with `head` the GCS) answers
# Token auth is mandatory: RAY_AUTH_MODE=token and a readable RAY_AUTH_TOKEN_PATH.
# Every container sees all of the host's CPUs: RAY_HEAD_NUM_CPUS / RAY_WORKER_NUM_CPUS split them.
#
# GPUs: Compose hands every replica of a service the same devices, so a worker claims
# RAY_GPUS_PER_WORKER (default 1) of them with a lock file per GPU on a volume the workers share;
# `--scale ray-worker=N` then puts each worker on its own GPU(s). RAY_GPUS_PER_WORKER=all: one
# worker that uses every GPU (no claiming).
set -euo pipefail

die() { echo "ray-node: $*" >&2; exit 1; }

require_token() {
  [[ "${RAY_AUTH_MODE:-}" == token ]] || die "RAY_AUTH_MODE must be 'token' (a cluster without auth accepts any job)"
  [[ -s "${RAY_AUTH_TOKEN_PATH:-}" && -r "${RAY_AUTH_TOKEN_PATH}" ]] \
    || die "no readable token at RAY_AUTH_TOKEN_PATH='${RAY_AUTH_TOKEN_PATH:-}' (make cluster-up writes docker/secrets/ray_token)"
}

# Lock free GPUs until this process (then `ray start --block`, which inherits the descriptors) exits.
claim_gpus() {
  local want=$1 lock_dir=${RAY_GPU_LOCK_DIR:-/var/lib/raypipe/gpu-locks} index uuid fd
  local -a claimed=()
  while IFS=', ' read -r index uuid; do
    exec {fd}>"$lock_dir/$uuid.lock"
    if flock --nonblock "$fd"; then
      claimed+=("$index")
      (( ${#claimed[@]} < want )) || break
    else
      exec {fd}>&-
    fi
  done < <(nvidia-smi --query-gpu=index,uuid --format=csv,noheader)
  (( ${#claimed[@]} == want )) \
    || die "wanted $want free GPU(s), found ${#claimed[@]}: more workers x RAY_GPUS_PER_WORKER than GPUs on this host?"
  CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${claimed[*]}")
  export CUDA_VISIBLE_DEVICES
  echo "ray-node: using GPU(s) $CUDA_VISIBLE_DEVICES"
}

http_ok() { python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" "$1"; }

case "${1:-}" in
  head)
    require_token
    # 0.0.0.0 inside the container only: Compose publishes these ports on the host's 127.0.0.1.
    # No Ray Client port: raypipe submits jobs through the dashboard's job API. (Ray 2.60 still starts
    # its client server inside the container; nothing publishes it.)
    exec ray start --head --block --disable-usage-stats --num-gpus=0 \
      --port=6379 \
      --dashboard-host=0.0.0.0 --dashboard-port=8265 \
      ${RAY_HEAD_NUM_CPUS:+--num-cpus="$RAY_HEAD_NUM_CPUS"}
    ;;
  worker)
    [[ -n "${2:-}" ]] || die "usage: ray-node worker HEAD_ADDRESS"
    require_token
    gpus=${RAY_GPUS_PER_WORKER:-1}
    gpu_args=()
    if ! command -v nvidia-smi >/dev/null; then
      gpu_args=(--num-gpus=0)  # the CPU image, or no GPU reserved for this container
    elif [[ "$gpus" != all ]]; then
      [[ "$gpus" =~ ^[0-9]+$ ]] || die "RAY_GPUS_PER_WORKER must be a number or 'all', not '$gpus'"
      (( gpus == 0 )) || claim_gpus "$gpus"
      gpu_args=(--num-gpus="$gpus")
    fi
    exec ray start --address="$2" --block --disable-usage-stats "${gpu_args[@]}" \
      ${RAY_WORKER_NUM_CPUS:+--num-cpus="$RAY_WORKER_NUM_CPUS"}
    ;;
  health)
    # Ray exempts these endpoints from token auth, so the check needs no token.
    http_ok http://127.0.0.1:52365/api/local_raylet_healthz
    if [[ "${2:-}" == head ]]; then http_ok http://127.0.0.1:8265/api/gcs_healthz; fi
    ;;
  *)
    die "usage: ray-node head | worker HEAD_ADDRESS | health [head]"
    ;;
esac
