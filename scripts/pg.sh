#!/usr/bin/env bash
# A throw-away PostgreSQL cluster for the tests (the PostgreSQL datastore's).
#
#   eval "$(scripts/pg.sh start)"   installs PostgreSQL if needed (apt-get, as root), starts a
#                                   cluster in a new temporary directory on a free loopback
#                                   port, and prints two export lines:
#                                     KEYCARD_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:PORT/postgres
#                                     KEYCARD_PG_DIR=the cluster's directory
#   scripts/pg.sh stop [DIR]        stops the cluster in DIR (default: $KEYCARD_PG_DIR) at once
#                                   and removes DIR; does nothing when there is none.
#
# scripts/test.sh uses both (and stops the cluster on exit, failure or interrupt). Each test
# creates its own database on the cluster and drops it afterwards. Everything but the two
# export lines goes to stderr. initdb refuses to run as root: as root, the cluster runs as
# the `postgres` user (which the Debian package creates).
set -euo pipefail

die() { echo "pg.sh: $*" >&2; exit 1; }

bindir() {
  local initdb
  initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
  if [[ -z "$initdb" ]]; then
    command -v initdb >/dev/null && { dirname "$(command -v initdb)"; return; }
    return 1
  fi
  dirname "$initdb"
}

# Runs a command as the cluster's owner: `postgres` when we are root, else ourselves.
as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start() {
  local bin
  if ! bin=$(bindir); then
    [[ $(id -u) -eq 0 ]] || die "PostgreSQL is not installed; install it (apt-get install postgresql) or run this as root"
    echo "pg.sh: installing postgresql" >&2
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2; then
      apt-get update >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2
    fi
    bin=$(bindir) || die "apt-get installed postgresql but no initdb was found"
  fi
  if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
    die "no 'postgres' user to run the cluster as (initdb refuses root); install the postgresql package"
  fi
  local dir
  dir=$(mktemp -d /tmp/keycard-pg.XXXXXX)
  chmod 700 "$dir"
  [[ $(id -u) -eq 0 ]] && chown postgres: "$dir"
  if ! as_owner "$bin/initdb" -D "$dir/data" -A trust -U postgres --no-sync >"$dir/initdb.log" 2>&1; then
    cat "$dir/initdb.log" >&2
    rm -rf "$dir"
    die "initdb failed"
  fi
  # A port that is free now may be taken before PostgreSQL binds it: try a few.
  local port tries
  for tries in 1 2 3 4 5 6 7 8; do
    port=$(( 20000 + RANDOM % 40000 ))
    if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
        start >/dev/null 2>&1; then
      echo "pg.sh: PostgreSQL up on 127.0.0.1:$port ($dir)" >&2
      echo "export KEYCARD_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:$port/postgres"
      echo "export KEYCARD_PG_DIR=$dir"
      return 0
    fi
  done
  cat "$dir/server.log" >&2 || true
  rm -rf "$dir"
  die "PostgreSQL did not start"
}

stop() {
  local dir="${1:-${KEYCARD_PG_DIR:-}}"
  [[ -n "$dir" && -d "$dir" ]] || return 0
  local bin
  if bin=$(bindir) && [[ -f "$dir/data/postmaster.pid" ]]; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:-}" ;;
  *) die "usage: eval \"\$(scripts/pg.sh start)\" | scripts/pg.sh stop [DIR]" ;;
esac
