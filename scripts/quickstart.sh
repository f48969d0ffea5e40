#!/usr/bin/env bash
# From a fresh Debian 12 machine to a running 3-member cluster:
# installs what is missing, builds pgbaton (release), and runs `pgbaton up`.
#   bash scripts/quickstart.sh [DIR]      (default DIR: /var/tmp/pgbaton-demo)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
DIR="${1:-/var/tmp/pgbaton-demo}"
bash scripts/install-deps.sh
echo "== building pgbaton (release)"
cargo build --release --locked -p pgbaton
echo "== bringing up a 3-member cluster in $DIR"
./target/release/pgbaton up --dir "$DIR" --nodes 3
