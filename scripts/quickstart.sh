#!/usr/bin/env bash
# From a fresh Debian 12 machine to a running 3-member cluster:
# installs what is missing, builds pgbaton (release), installs it as /usr/local/bin/pgbaton
# (~/.local/bin when not root), and runs `pgbaton up`.
#   bash scripts/quickstart.sh [DIR]      (default DIR: /var/tmp/pgbaton-demo)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
DIR="${1:-/var/tmp/pgbaton-demo}"
bash scripts/install-deps.sh
echo "== building pgbaton (release)"
cargo build --release --locked -p pgbaton
# `pgbaton` on the PATH: the hints `up` prints, and the README, call it by that name.
if [ "$(id -u)" = 0 ]; then BINDIR=/usr/local/bin; else BINDIR="$HOME/.local/bin"; fi
mkdir -p "$BINDIR"
install -m 0755 ./target/release/pgbaton "$BINDIR/pgbaton"
echo "== installed $BINDIR/pgbaton"
case ":$PATH:" in *":$BINDIR:"*) ;; *) echo "note: $BINDIR is not on your PATH: add it, or call $BINDIR/pgbaton" ;; esac
echo "== bringing up a 3-member cluster in $DIR"
"$BINDIR/pgbaton" up --dir "$DIR" --nodes 3
