#!/usr/bin/env bash
# Rows per second and peak memory of `pledgectl export charges`, against
# psql's \copy of the same query on the same server in the same run.
#
#   tests/bench/export.sh BUILD_DIR [ROWS]        (ROWS default 1000000)
#
# Uses the server in the libpq environment when PGHOST is set (in a database
# of its own, dropped afterwards); otherwise starts a throwaway *durable*
# cluster (fsync on) with scripts/pgtmp.sh and removes it afterwards.
# Builds nothing: BUILD_DIR must hold daemon/pledgectl.
#
# Data (generate_series): 10,000 donors (names with commas, quotes, leading
# '=' and non-ASCII), 10,000 pledges in USD/EUR/JPY/BHD across four funds,
# ROWS charges (10,000 a day from 1 January 2026, so up to 3,650,000
# rows stay in 2026; 90 % succeeded, some refunded, fees) and one
# charge_attempt per charge. Each export runs RUNS times (default 3); the
# best time is printed. Peak RSS comes from /usr/bin/time (%M), or VmHWM
# where /usr/bin/time is missing. The two outputs are also compared byte
# for byte. No figure is asserted.
set -euo pipefail

build=${1:?usage: tests/bench/export.sh BUILD_DIR [ROWS]}
rows=${2:-1000000}
[ "$rows" -ge 1 ] && [ "$rows" -le 3650000 ] || { echo "export.sh: ROWS must be 1..3650000" >&2; exit 2; }
runs=${RUNS:-3}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ctl=$(cd "$build" && pwd)/daemon/pledgectl
[ -x "$ctl" ] || { echo "export.sh: $ctl not built (ninja -C $build)" >&2; exit 1; }

own_cluster=0
work=$(mktemp -d "${TMPDIR:-/tmp}/export-bench.XXXXXX")
db=pledged_export_bench_$$
cleanup() {
  rm -rf "$work"
  if [ "$own_cluster" = 1 ]; then
    pgtmp_stop
  else
    dropdb --if-exists "$db" 2>/dev/null || true
  fi
}
trap cleanup EXIT

if [ -z "${PGHOST:-}" ]; then
  # shellcheck source=../../scripts/pgtmp.sh
  source "$here/scripts/pgtmp.sh"
  own_cluster=1
  pgtmp_start durable
  echo "server: throwaway durable cluster in $PGTMP_DIR"
else
  echo "server: PGHOST=$PGHOST PGPORT=${PGPORT:-5432} (as given), database $db"
fi
chmod 755 "$work"
createdb "$db"
export PGDATABASE=$db
"$ctl" migrate >/dev/null

echo "generating $rows charges..."
t0=$(date +%s.%N)
psql -X -q -v ON_ERROR_STOP=1 -v rows="$rows" <<'SQL'
INSERT INTO donor (external_ref, full_name, email, city)
SELECT 'D' || g,
       (ARRAY['Smith, John', 'The "Boss"', '=1+2 Zoë', 'Ünïcødé 日本', 'Plain Name'])[g % 5 + 1] || ' ' || g,
       'donor' || g || '@example.org', '@City, Q'
FROM generate_series(1, 10000) g;
INSERT INTO pledge (donor_id, amount_minor, currency, fund, start_on, next_charge_on)
SELECT g, (ARRAY[2500, 1000, 12345, 99])[g % 4 + 1], (ARRAY['USD', 'EUR', 'JPY', 'BHD'])[g % 4 + 1],
       (ARRAY['general', 'scholarships', '-water', 'roof, "big"'])[g % 4 + 1], '2026-01-01', '2027-01-01'
FROM generate_series(1, 10000) g;
INSERT INTO charge (pledge_id, donor_id, period, amount_minor, currency, fund, status, due_at,
                    succeeded_at, refunded_minor, fee_minor, gateway_ref, failure_code, decline_code)
SELECT p.id, p.donor_id, x.period, p.amount_minor, p.currency, p.fund, x.status, x.period,
       CASE WHEN x.status = 'succeeded' THEN x.period + time '09:00' + (g % 86400) * interval '1 second' END,
       CASE WHEN x.status = 'succeeded' AND g % 37 = 0 THEN p.amount_minor / 2 ELSE 0 END,
       CASE WHEN x.status = 'succeeded' AND g % 3 = 0 THEN p.amount_minor / 30 END,
       CASE WHEN x.status = 'succeeded' THEN 'ch_' || g END,
       CASE WHEN x.status = 'failed' THEN 'card_declined' END,
       CASE WHEN x.status = 'failed' THEN 'insufficient_funds' END
FROM generate_series(0, :rows - 1) g
JOIN pledge p ON p.id = g % 10000 + 1
CROSS JOIN LATERAL (SELECT date '2026-01-01' + g / 10000 AS period,
                           CASE WHEN g % 10 = 9 THEN 'failed' ELSE 'succeeded' END AS status) x;
INSERT INTO charge_attempt (charge_id, attempt_no, idempotency_key, amount_minor, currency, state,
                            outcome, finished_at)
SELECT id, 1, 'pledged-' || id || '-1', amount_minor, currency,
       CASE WHEN status = 'succeeded' THEN 'succeeded' ELSE 'declined' END,
       CASE WHEN status = 'succeeded' THEN 'succeeded' ELSE 'declined_soft' END, due_at
FROM charge;
VACUUM ANALYZE;
SQL
t1=$(date +%s.%N)
echo "generated in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"

from=2026-01-01
to=2026-12-31
# The same query pledgectl runs, without the COPY wrapper, for psql's \copy;
# the same settings pledgectl gives it (UTC is pledgectl's default zone).
sql=$("$ctl" export charges --sql)
query=${sql#COPY (}
query=${query%) TO STDOUT (FORMAT csv, HEADER)}
settings="SELECT set_config('TimeZone', 'UTC', false), set_config('DateStyle', 'ISO, YMD', false),
  set_config('pledged.export_from', '$from', false), set_config('pledged.export_to', '$to', false)"

measure() { # label output-file command... ; prints "seconds peak_kb"
  local best_s="" best_kb=""
  for _ in $(seq "$runs"); do
    local s kb
    if [ -x /usr/bin/time ]; then
      /usr/bin/time -f '%e %M' -o "$work/time" "${@:2}" >"$1"
      read -r s kb <"$work/time"
    else
      local a b
      a=$(date +%s.%N)
      "${@:2}" >"$1"
      b=$(date +%s.%N)
      s=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", b - a }')
      kb=?
    fi
    if [ -z "$best_s" ] || awk -v a="$s" -v b="$best_s" 'BEGIN { exit !(a < b) }'; then
      best_s=$s best_kb=$kb
    fi
  done
  echo "$best_s $best_kb"
}

read -r ctl_s ctl_kb < <(measure "$work/ctl.csv" "$ctl" export charges --from "$from" --to "$to")
read -r out_s out_kb < <(measure /dev/null bash -c \
  'rm -f "$1"; exec "$2" export charges --from "$3" --to "$4" --out "$1"' _ \
  "$work/out.csv" "$ctl" "$from" "$to")
read -r psql_s psql_kb < <(measure "$work/psql.csv" psql -X -q -o /dev/null -c "$settings" \
  -c "\\copy ($query) to pstdout csv header")

lines=$(wc -l <"$work/ctl.csv")
bytes=$(stat -c %s "$work/ctl.csv")
same=differ
cmp -s "$work/ctl.csv" "$work/psql.csv" && cmp -s "$work/ctl.csv" "$work/out.csv" && same=identical

echo "rows=$rows lines=$lines bytes=$bytes runs=$runs (best of) cores=$(nproc 2>/dev/null || echo '?') (server and client share them)"
printf '%-34s %8s %12s %10s\n' what seconds rows/s peak_rss
awk -v r="$rows" -v s="$ctl_s" -v k="$ctl_kb" 'BEGIN { printf "%-34s %8.2f %12.0f %8s KB\n", "pledgectl export charges >stdout", s, (s > 0 ? r / s : 0), k }'
awk -v r="$rows" -v s="$out_s" -v k="$out_kb" 'BEGIN { printf "%-34s %8.2f %12.0f %8s KB\n", "pledgectl export charges --out", s, (s > 0 ? r / s : 0), k }'
awk -v r="$rows" -v s="$psql_s" -v k="$psql_kb" 'BEGIN { printf "%-34s %8.2f %12.0f %8s KB\n", "psql \\copy (same query)", s, (s > 0 ? r / s : 0), k }'
awk -v a="$ctl_s" -v b="$psql_s" -v c="$out_s" 'BEGIN {
  printf "ratio pledgectl/psql time: %.2f (stdout), %.2f (--out, fsync included)\n", (b > 0 ? a / b : 0), (b > 0 ? c / b : 0) }'
echo "outputs: $same (pledgectl stdout, pledgectl --out, psql \\copy)"
