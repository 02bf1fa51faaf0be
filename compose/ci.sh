#!/usr/bin/env bash
# CI's compose step: the CPU stack built and brought up for real on this machine's Docker
# engine, checked, torn down. Run as root after `pip install -e ".[dev]"`:
#
#   bash compose/ci.sh
#
# 1. Docker engine, debootstrap and Compose v1 from Debian's packages, if missing.
# 2. dockerd started if none answers (no iptables, no default bridge: the stack uses host
#    networking), and stopped again at the end if this script started it.
# 3. compose/build-offline.sh: the base image (debootstrap, skipped when Docker still has it
#    from an earlier run) and radixmesh:cpu from host-built wheels.
# 4. tests/compose with RADIXMESH_COMPOSE_TESTS=1: the schema and `config` checks, the health
#    command, the stack itself (tests/compose/test_compose_stack.py), then the multi-node stack
#    from the same image (test_compose_multinode_stack.py: router, two nodes, Redis).
# 5. Always, even after a failure: the stack down, its images removed (the debootstrap base
#    stays as the cache for the next run; RADIXMESH_REMOVE_BASE=1 removes it too).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
IMAGE=${RADIXMESH_IMAGE:-radixmesh:cpu}
BASE_IMAGE=${RADIXMESH_BASE_IMAGE:-radixmesh-base:bookworm}
log() { echo "[compose-ci +$((SECONDS - started))s] $*"; }
mkdir -p build

missing=()
for tool in dockerd:docker.io debootstrap:debootstrap docker-compose:docker-compose; do
  command -v "${tool%%:*}" > /dev/null || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  apt-get update -qq > /dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" > build/compose-apt.log 2>&1 || { tail -20 build/compose-apt.log; exit 1; }
fi

dockerd_pid=""
if ! docker info > /dev/null 2>&1; then
  log "starting dockerd (log: build/dockerd.log)"
  dockerd --iptables=false --bridge=none > build/dockerd.log 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 60); do docker info > /dev/null 2>&1 && break; sleep 1; done
  docker info > /dev/null 2>&1 || { tail -20 build/dockerd.log; exit 1; }
fi

cleanup() {
  local status=$?
  log "teardown"
  docker-compose -p radixmesh-ci -f compose/compose.cpu.yaml -f compose/compose.ci.yaml \
    down -v --remove-orphans > /dev/null 2>&1 || true
  docker-compose -p radixmesh-ci-multinode -f compose/compose.multinode.cpu.yaml \
    -f compose/compose.multinode.ci.yaml down -v --remove-orphans > /dev/null 2>&1 || true
  docker image rm -f "$IMAGE" > /dev/null 2>&1 || true
  docker image prune -f > /dev/null 2>&1 || true  # the build's untagged stage images
  if [[ "${RADIXMESH_REMOVE_BASE:-0}" == 1 ]]; then
    docker image rm -f "$BASE_IMAGE" > /dev/null 2>&1 || true
  fi
  if [[ -n "$dockerd_pid" ]]; then
    kill "$dockerd_pid" 2> /dev/null && wait "$dockerd_pid" 2> /dev/null || true
  fi
  log "done (exit $status) in $((SECONDS - started))s"
}
trap cleanup EXIT

log "building $IMAGE"
bash compose/build-offline.sh
log "bringing the stack up and checking it"
RADIXMESH_COMPOSE_TESTS=1 python3 -m pytest -q -p no:cacheprovider tests/compose
