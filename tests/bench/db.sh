#!/usr/bin/env bash
# Statements per second through lib/db versus pgbench, same server, same run.
#
#   tests/bench/db.sh BUILD_DIR [SECONDS] [CLIENTS]
#
# Uses the server in the libpq environment when PGHOST is set; otherwise
# starts a throwaway *durable* cluster (fsync on) with scripts/pgtmp.sh and
# removes it afterwards. Builds nothing: BUILD_DIR must hold
# tests/bench/db_bench. For each statement (SELECT $1::int, and an INSERT
# into db_bench_t), runs pgbench -M prepared with CLIENTS clients, then
# db_bench with CLIENTS connections one statement per round trip (depth 1,
# the like-for-like figure) and pipelined (depth 16), and prints rates and
# the ratio lib/db / pgbench (pgbench -j 1: one client thread, like
# lib/db; the -j N figure is printed too). No figure is asserted.
set -euo pipefail

build=${1:?usage: tests/bench/db.sh BUILD_DIR [SECONDS] [CLIENTS]}
secs=${2:-5}
clients=${3:-4}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bench=$(cd "$build" && pwd)/tests/bench/db_bench
[ -x "$bench" ] || { echo "db.sh: $bench not built (ninja -C $build)" >&2; exit 1; }

pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
pgbench=${PGBENCH:-$pgbin/pgbench}
[ -x "$pgbench" ] || { echo "db.sh: pgbench not found (set PGBENCH)" >&2; exit 1; }

own_cluster=0
work=$(mktemp -d "${TMPDIR:-/tmp}/db-bench.XXXXXX")
cleanup() {
  rm -rf "$work"
  if [ "$own_cluster" = 1 ]; then pgtmp_stop; fi
}
trap cleanup EXIT

if [ -z "${PGHOST:-}" ]; then
  # shellcheck source=../../scripts/pgtmp.sh
  source "$here/scripts/pgtmp.sh"
  own_cluster=1
  pgtmp_start durable
  echo "server: throwaway durable cluster in $PGTMP_DIR"
else
  echo "server: PGHOST=$PGHOST PGPORT=${PGPORT:-5432} (as given)"
fi

chmod 755 "$work"
printf '\\set x random(1, 100000)\nSELECT :x::int;\n' >"$work/select.sql"
printf '\\set x random(1, 100000)\nINSERT INTO db_bench_t (v) VALUES (:x);\n' >"$work/insert.sql"

threads=$(nproc 2>/dev/null || echo 1)
[ "$threads" -gt "$clients" ] && threads=$clients

# db_bench creates db_bench_t; run it once briefly so pgbench finds the table
"$bench" --mode insert --clients 1 --seconds 1 >/dev/null

pgbench_rate() { # mode threads
  "$pgbench" -n -M prepared -c "$clients" -j "$2" -T "$secs" -f "$work/$1.sql" 2>/dev/null |
    sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -n1
}
dbbench_rate() { # mode depth
  "$bench" --mode "$1" --clients "$clients" --depth "$2" --seconds "$secs" |
    sed -n 's/.* rate=\([0-9.]*\).*/\1/p'
}

# lib/db is one thread (the daemon's loop); pgbench -j 1 is the like-for-like
# client, -j N lets pgbench use more cores than lib/db ever will.
echo "clients=$clients seconds=$secs cores=$(nproc 2>/dev/null || echo '?') (server and client share them)"
printf '%-7s %11s %11s %12s %6s %13s %6s\n' stmt 'pgbench-j1' "pgbench-j$threads" 'lib/db(d=1)' ratio \
  'lib/db(d=16)' ratio
for mode in select insert; do
  p1=$(pgbench_rate "$mode" 1)
  pn=$(pgbench_rate "$mode" "$threads")
  d1=$(dbbench_rate "$mode" 1)
  d16=$(dbbench_rate "$mode" 16)
  awk -v m="$mode" -v p="$p1" -v q="$pn" -v a="$d1" -v b="$d16" 'BEGIN {
    printf "%-7s %11.0f %11.0f %12.0f %6.2f %13.0f %6.2f\n", m, p, q, a, (p > 0 ? a / p : 0), b, (p > 0 ? b / p : 0)
  }'
done
echo "rates in statements/s; ratio = lib/db / pgbench -j1 (-M prepared, same clients, same server)"
