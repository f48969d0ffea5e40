#!/usr/bin/env bash
# Build pgbaton's container image (deploy/docker/Dockerfile) with no container registry:
#   bash scripts/docker-image.sh [BINARY] [TAG]
# BINARY defaults to target/release/pgbaton (built when missing), TAG to pgbaton:latest.
# The Debian 12 base image (pgbaton-base:bookworm) is made with debootstrap and
# `docker import` when the Docker engine has none (about a minute, 200 MB); set
# PGBATON_BASE=debian:bookworm to use a registry's image instead. apt inside the build
# reaches Debian's mirror through the host's network (`--network host`).
# PGBATON_BASE_CACHE=FILE keeps the debootstrapped tree as a tarball there, and imports it
# from there the next time (the tests use it: a fresh Docker engine needs the base again).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/release/pgbaton}"
TAG="${2:-pgbaton:latest}"
BASE="${PGBATON_BASE:-pgbaton-base:bookworm}"
MIRROR="${PGBATON_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

command -v docker >/dev/null || { echo "docker is not installed (apt-get install docker.io)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "no Docker engine answers (is dockerd running? DOCKER_HOST=${DOCKER_HOST:-unset})" >&2; exit 1; }
if [ ! -x "$BIN" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
  cargo build --release --locked -p pgbaton
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Debian 12 (minbase) as a tarball at $1, from the mirror with debootstrap.
debootstrap_tar() {
  command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
  echo "== making the base image $BASE with debootstrap (bookworm, minbase) from $MIRROR"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  # The image's apt uses the mirror with security updates, like a stock Debian image.
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' \
    "$MIRROR" "$MIRROR" >"$work/rootfs/etc/apt/sources.list"
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  tar -C "$work/rootfs" -cf "$1.tmp" . && mv "$1.tmp" "$1"
  rm -rf "$work/rootfs"
}

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  [ "$BASE" = "pgbaton-base:bookworm" ] || { echo "base image $BASE not found" >&2; exit 1; }
  tarball="${PGBATON_BASE_CACHE:-$work/base.tar}"
  if [ -s "$tarball" ]; then
    echo "== importing the base image $BASE from $tarball"
  else
    debootstrap_tar "$tarball"
  fi
  docker import - "$BASE" <"$tarball" >/dev/null
fi

echo "== building $TAG from $BASE with $BIN"
mkdir -p "$work/ctx"
cp deploy/docker/Dockerfile deploy/docker/entrypoint.sh "$work/ctx/"
# Debug symbols are of no use in the image (a debug build shrinks from ~120 MB to ~30 MB).
objcopy --strip-debug "$BIN" "$work/ctx/pgbaton"
docker build --network host --build-arg "BASE=$BASE" -t "$TAG" "$work/ctx"
echo "built $TAG; next: docker-compose up -d"
