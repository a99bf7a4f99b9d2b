# shellcheck shell=bash
# A throwaway PostgreSQL cluster for tests, benchmarks and the demo.
# Source this file, then:
#   pgtmp_start [fast|durable]   initdb in a temp dir, start on a unix socket
#                                there, export PGHOST PGPORT PGUSER PGDATABASE
#   pgtmp_stop                   stop and remove it (safe to call twice)
#   pgtmp_ctl ARGS...            pg_ctl against the cluster (restart, stop...)
# initdb refuses to run as root; as root the cluster belongs to the
# `postgres` system user (created by Debian's postgresql package).
# "fast" turns durability off (tests only); "durable" keeps fsync on
# (benchmarks).

PGTMP_BIN=${PGTMP_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}
PGTMP_DIR=""

pgtmp__as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pgtmp_ctl() {
  pgtmp__as_owner "$PGTMP_BIN/pg_ctl" -D "$PGTMP_DIR/data" -w -t 60 -l "$PGTMP_DIR/server.log" "$@"
}

pgtmp_start() {
  local mode=${1:-fast}
  [ -x "$PGTMP_BIN/initdb" ] || { echo "pgtmp: PostgreSQL server binaries not found (run scripts/deps)" >&2; return 1; }
  PGTMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pledged-pg.XXXXXX")
  chmod 755 "$PGTMP_DIR"
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || { echo "pgtmp: no 'postgres' user to run the cluster as" >&2; return 1; }
    chown postgres: "$PGTMP_DIR"
  fi
  pgtmp__as_owner "$PGTMP_BIN/initdb" -D "$PGTMP_DIR/data" -U postgres -A trust -E UTF8 \
    --locale=C.UTF-8 --no-sync >"$PGTMP_DIR/initdb.log" 2>&1 \
    || { cat "$PGTMP_DIR/initdb.log" >&2; return 1; }
  {
    echo "listen_addresses = ''"
    echo "unix_socket_directories = '$PGTMP_DIR'"
    echo "max_connections = 300"
    echo "shared_buffers = 256MB"
    echo "max_locks_per_transaction = 256"
    echo "log_min_messages = warning"
    echo "log_min_error_statement = panic"
    if [ "$mode" = fast ]; then
      echo "fsync = off"
      echo "synchronous_commit = off"
      echo "full_page_writes = off"
    fi
  } >>"$PGTMP_DIR/data/postgresql.conf"
  export PGHOST=$PGTMP_DIR PGPORT=${PGTMP_PORT:-5432} PGUSER=postgres PGDATABASE=postgres
  echo "port = $PGPORT" >>"$PGTMP_DIR/data/postgresql.conf"
  pgtmp_ctl start >/dev/null || { cat "$PGTMP_DIR/server.log" >&2; return 1; }
  export PGTMP_DIR
}

pgtmp_stop() {
  [ -n "$PGTMP_DIR" ] || return 0
  if [ -d "$PGTMP_DIR/data" ]; then
    pgtmp_ctl stop -m immediate >/dev/null 2>&1 || true
  fi
  rm -rf "$PGTMP_DIR"
  PGTMP_DIR=""
}
