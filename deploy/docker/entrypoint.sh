#!/bin/bash
# The container's entry point.
#
#   agent (default)  run the pgbaton agent. The config is /etc/pgbaton/node.toml when one is
#                    mounted there (or PGBATON_CONFIG names another); otherwise it is written
#                    by `pgbaton init-node` from the environment:
#                      PGBATON_CLUSTER      cluster name (default: main)
#                      PGBATON_NAME         member name (default: the container's host name)
#                      PGBATON_ADDRESS      the name or IP the others reach it at (default: NAME)
#                      PGBATON_ETCD         etcd endpoints, comma-separated (required)
#                      PGBATON_NETWORK      networks (CIDR) members and clients come from,
#                                           comma-separated (required)
#                      PGBATON_DATABASE     databases to create at bootstrap, comma-separated
#                      PGBATON_SYNCHRONOUS  off, on or quorum (default: on)
#                      PGBATON_SECRETS_DIR  the replication password and API token
#                                           (default: /etc/pgbaton/secrets)
#                    Secrets never come from the environment: they are 0600 files.
#   secrets          make the shared secrets in PGBATON_SECRETS_DIR when missing, and exit.
#   anything else    run as given (etcd, haproxy, pgbaton list, ...).
set -euo pipefail

config="${PGBATON_CONFIG:-/etc/pgbaton/node.toml}"
secrets_dir="${PGBATON_SECRETS_DIR:-/etc/pgbaton/secrets}"

die() { echo "pgbaton-entrypoint: $*" >&2; exit 2; }

# Repeat a flag for every item of a comma-separated list (blanks around items dropped,
# empty items skipped).
flags() {
  local flag=$1 list=$2 item
  IFS=',' read -ra items <<<"$list"
  for item in "${items[@]}"; do
    item="${item#"${item%%[![:space:]]*}"}"
    item="${item%"${item##*[![:space:]]}"}"
    if [ -n "$item" ]; then printf '%s\n%s\n' "$flag" "$item"; fi
  done
}

write_config() {
  [ -n "${PGBATON_ETCD:-}" ] || die "no $config and no PGBATON_ETCD: mount a node.toml there, or set PGBATON_ETCD (and PGBATON_NETWORK)"
  [ -n "${PGBATON_NETWORK:-}" ] || die "PGBATON_NETWORK is not set: the networks (CIDR) members and clients connect from"
  local name="${PGBATON_NAME:-$(hostname)}"
  local args=(init-node --cluster "${PGBATON_CLUSTER:-main}" --name "$name"
    --address "${PGBATON_ADDRESS:-$name}" --synchronous "${PGBATON_SYNCHRONOUS:-on}"
    --secrets-dir "$secrets_dir" --out "$config" --force)
  mapfile -t more < <(flags --etcd "$PGBATON_ETCD"; flags --network "$PGBATON_NETWORK";
    flags --database "${PGBATON_DATABASE:-}")
  # (init-node's hints are for hosts run by systemd: not printed here.)
  pgbaton "${args[@]}" "${more[@]}" >/dev/null
}

case "${1:-agent}" in
  agent)
    shift || true
    # A mounted config is used as it is; one this script wrote is written again from the
    # environment (the same values give the same file; changed ones take effect).
    if [ ! -f "$config" ] || grep -q '^# Written by pgbaton-entrypoint' "$config"; then
      write_config
      sed -i '1i # Written by pgbaton-entrypoint from the environment: edits are lost' "$config"
    fi
    exec pgbaton agent -c "$config" "$@"
    ;;
  secrets)
    exec pgbaton init-secrets --secrets-dir "$secrets_dir"
    ;;
  *)
    exec "$@"
    ;;
esac
