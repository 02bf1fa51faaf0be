#!/usr/bin/env bash
# Builds the radixmesh CPU image on a machine whose Docker builds reach no registry or package
# index (CI, this project's machines): a Debian base made locally, wheels built on the host.
#
#   bash compose/build-offline.sh            # -> radixmesh:cpu (and radixmesh-base:bookworm)
#
# 1. The base image, only if missing (Docker keeps it, so later runs skip this): debootstrap a
#    minimal bookworm with python3, its venv module and redis-server (the CI stack's Redis comes
#    from it), drop apt's caches, `docker import`.
# 2. Wheels on the host into compose/wheels/: every dependency (CPU torch from the local
#    wheelhouse), plus what building the project's own wheel needs inside the image.
# 3. `docker build --network host` with PIP_NO_INDEX, so pip reads compose/wheels alone.
#
# Environment: RADIXMESH_BASE_IMAGE, RADIXMESH_IMAGE, DEBIAN_MIRROR, TORCH_SPEC override the
# defaults below. Needs root (debootstrap), docker, debootstrap, and a host python3 of the
# base's version (wheels are built for the host's interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${RADIXMESH_BASE_IMAGE:-radixmesh-base:bookworm}
IMAGE=${RADIXMESH_IMAGE:-radixmesh:cpu}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
WHEELS=compose/wheels
log() { echo "[build-offline $(date +%T)] $*"; }

make_base() {
  local root
  root=$(mktemp -d /tmp/radixmesh-base.XXXXXX)
  log "debootstrap bookworm into $root (from $MIRROR)"
  debootstrap --variant=minbase --include=python3,python3-venv,redis-server \
    bookworm "$root" "$MIRROR" > "$root.log" 2>&1 || { tail -20 "$root.log"; exit 1; }
  rm -f "$root.log"
  # What only apt needs at install time: it has no place in an image (the builds use no apt).
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/*
  tar -C "$root" -c . | docker import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" > /dev/null
  rm -rf "$root"
  log "imported $BASE_IMAGE"
}

if docker image inspect "$BASE_IMAGE" > /dev/null 2>&1; then
  log "base image $BASE_IMAGE present"
else
  make_base
fi

# The image's python must run the host's wheels (compiled ones are per Python version).
base_py=$(docker run --rm "$BASE_IMAGE" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
host_py=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [[ "$base_py" != "$host_py" ]]; then
  echo "host python3 is $host_py but $BASE_IMAGE has $base_py: wheels would not match" >&2
  exit 1
fi

log "wheels into $WHEELS"
# --find-links $WHEELS: a second run takes what the first one left instead of rebuilding.
# (pip's warnings about configured find-links folders this machine lacks are noise: dropped.)
quiet_pip() { python3 -m pip "$@" 2> >(grep -v "is ignored: it is neither a file" >&2); }
quiet_pip wheel --quiet --find-links "$WHEELS" --wheel-dir "$WHEELS" "$TORCH_SPEC" .
# The image builds its own radixmesh wheel from source; a host-built one would only go stale.
rm -f "$WHEELS"/radixmesh-*.whl
# The build requirements of the project's wheel (pyproject.toml [build-system]), for pip's
# isolated build inside the image.
quiet_pip download --quiet --find-links "$WHEELS" --dest "$WHEELS" \
  "setuptools>=77" wheel "grpcio-tools>=1.60"
# Dependencies that markers ask for on the image's patch release only: the host resolves its own
# (bookworm's python3 is 3.11.2; `redis` needs async-timeout below 3.11.3).
quiet_pip download --quiet --find-links "$WHEELS" --dest "$WHEELS" "async-timeout>=4.0.3"
log "$(find "$WHEELS" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1)"

log "docker build $IMAGE"
mkdir -p build
docker build --network host -f compose/Dockerfile --target cpu \
  --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg PIP_NO_INDEX=1 \
  --build-arg WHEELS="$WHEELS" --build-arg TORCH_SPEC="$TORCH_SPEC" \
  -t "$IMAGE" . > build/compose-image-build.log 2>&1 \
  || { tail -40 build/compose-image-build.log; exit 1; }
log "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | numfmt --to=iec))"
