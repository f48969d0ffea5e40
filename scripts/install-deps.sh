#!/usr/bin/env bash
# Install what pgbaton needs to build and test on Debian 12, when it is missing:
# PostgreSQL 15 server binaries (and with them the `postgres` OS user).
# Uses sudo when not root. Safe to run again.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: run as root or install sudo" >&2; exit 1; }
  SUDO=sudo
fi
missing=()
[ -x /usr/lib/postgresql/15/bin/postgres ] && [ -x /usr/lib/postgresql/15/bin/pg_basebackup ] || missing+=(postgresql-15 postgresql-client-15)
command -v cc >/dev/null || missing+=(gcc)          # rusqlite builds SQLite from source
command -v bc >/dev/null || missing+=(bc)           # .ci/run and bench/ add up figures
command -v haproxy >/dev/null || missing+=(haproxy) # tests of examples/haproxy.cfg
command -v chromium >/dev/null || missing+=(chromium) # headless test of the status page
command -v etcd >/dev/null || missing+=(etcd-server)   # the store contract suite runs against real etcd
command -v protoc >/dev/null || missing+=(protobuf-compiler libprotobuf-dev) # etcd-client builds its protocol
command -v ip >/dev/null || missing+=(iproute2)      # network namespaces for the partition test
command -v openssl >/dev/null || missing+=(openssl)  # the TLS test reads the certificate a server presents
command -v pgbackrest >/dev/null || missing+=(pgbackrest) # backups, archive and point-in-time recovery (issue 11)
# The docker-compose test: its own dockerd (started by the test, without iptables changes),
# Debian's compose, and debootstrap for the base image (no registry is reachable).
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v objcopy >/dev/null || missing+=(binutils)  # strips the binary put in the image
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -q
  # No service starts while installing: docker.io's own dockerd would change iptables
  # (FORWARD policy DROP) and break the network-namespace tests. The test starts its own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 0755 /usr/sbin/policy-rc.d
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  # Nor at the next boot: Debian enables docker.io's units.
  if [[ " ${missing[*]} " == *" docker.io "* ]] && command -v systemctl >/dev/null; then
    $SUDO systemctl disable docker.service docker.socket containerd.service >/dev/null 2>&1 || true
  fi
else
  echo "install-deps: everything the build and the tests need is present"
fi
id postgres >/dev/null 2>&1 || { echo "install-deps: no postgres OS user after installing PostgreSQL" >&2; exit 1; }
command -v cargo >/dev/null || [ -x "$HOME/.cargo/bin/cargo" ] || {
  echo "install-deps: no Rust toolchain: install it with rustup (https://rustup.rs)" >&2; exit 1; }
