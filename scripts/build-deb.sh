#!/usr/bin/env bash
# A Debian package of pgbaton, made with dpkg-deb alone (no tool to install):
#   bash scripts/build-deb.sh [BINARY] [OUT_DIR]
# BINARY defaults to target/release/pgbaton (built when missing), OUT_DIR to target/debian.
# The package holds /usr/bin/pgbaton, the systemd unit (not enabled: a host needs
# `pgbaton init-node` first), the etcd drop-in and example, the guide, and /etc/pgbaton.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/release/pgbaton}"
OUT="${2:-target/debian}"
if [ ! -x "$BIN" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
  cargo build --release --locked -p pgbaton
fi
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ARCH=$(dpkg --print-architecture)
ROOT=$(mktemp -d)
chmod 0755 "$ROOT"
trap 'rm -rf "$ROOT"' EXIT
install -D -m 0755 "$BIN" "$ROOT/usr/bin/pgbaton"
install -D -m 0644 deploy/systemd/pgbaton.service "$ROOT/lib/systemd/system/pgbaton.service"
install -D -m 0644 deploy/systemd/etcd.service.d/pgbaton.conf \
  "$ROOT/usr/share/doc/pgbaton/examples/etcd.service.d/pgbaton.conf"
install -D -m 0644 deploy/etcd/etcd.default "$ROOT/usr/share/doc/pgbaton/examples/etcd.default"
install -D -m 0644 examples/haproxy.cfg "$ROOT/usr/share/doc/pgbaton/examples/haproxy.cfg"
install -D -m 0644 docs/three-hosts.md "$ROOT/usr/share/doc/pgbaton/three-hosts.md"
install -D -m 0644 README.md "$ROOT/usr/share/doc/pgbaton/README.md"
install -d -m 0755 "$ROOT/etc/pgbaton"
install -d -m 0755 "$ROOT/DEBIAN"
SIZE=$(du -sk "$ROOT" | cut -f1)
cat > "$ROOT/DEBIAN/control" <<CONTROL
Package: pgbaton
Version: $VERSION
Architecture: $ARCH
Maintainer: pgbaton developers <pgbaton@localhost>
Installed-Size: $SIZE
Depends: libc6, postgresql-15 | postgresql
Recommends: etcd-server
Suggests: haproxy
Section: database
Priority: optional
Description: high availability for PostgreSQL streaming replication
 One binary: an agent per node runs its PostgreSQL, the agents coordinate
 through etcd (or an embedded store on one machine), and only the lease
 holder runs a writable primary. Start with /usr/share/doc/pgbaton/three-hosts.md.
CONTROL
# The unit is installed, never enabled or started by the package: a host needs its
# /etc/pgbaton/node.toml first (`pgbaton init-node`).
cat > "$ROOT/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
POSTINST
chmod 0755 "$ROOT/DEBIAN/postinst"
mkdir -p "$OUT"
DEB="$OUT/pgbaton_${VERSION}_${ARCH}.deb"
# DEB_COMPRESSION=none for a quick package of a debug build (the tests); xz by default.
dpkg-deb --root-owner-group -Z"${DEB_COMPRESSION:-xz}" --build "$ROOT" "$DEB" >/dev/null
echo "$DEB"
