#!/usr/bin/env bash
# Year-end receipts per second: `pledgectl receipts generate` end to end
# (plan, numbering, PDF rendering with cairo/pango, fsync'd files, commits).
#
#   tests/bench/receipts.sh BUILD_DIR [DONORS]
#
# DONORS (default 10000) donors with 12 monthly USD gifts each in 2026.
# Uses the server in the libpq environment when PGHOST is set (a scratch
# database is created and dropped there); otherwise starts a throwaway
# *durable* cluster (fsync on) with scripts/pgtmp.sh and removes it.
# Prints the rate of the first run (everything issued) and of a second run
# (nothing changed: the idempotent check). No figure is asserted.
set -euo pipefail

build=${1:?usage: tests/bench/receipts.sh BUILD_DIR [DONORS]}
donors=${2:-10000}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ctl=$(cd "$build" && pwd)/daemon/pledgectl
[ -x "$ctl" ] || { echo "receipts.sh: $ctl not built (ninja -C $build)" >&2; exit 1; }

own_cluster=0
work=$(mktemp -d "${TMPDIR:-/tmp}/receipts-bench.XXXXXX")
db=receipts_bench_$$
cleanup() {
  if [ "$own_cluster" = 1 ]; then
    pgtmp_stop
  else
    dropdb --if-exists "$db" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
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
createdb "$db"
export PGDATABASE=$db
"$ctl" migrate >/dev/null

psql -q -v ON_ERROR_STOP=1 -v donors="$donors" <<'SQL'
INSERT INTO donor (full_name, email, address_line1, city, region, postal_code, country)
SELECT 'Donor ' || i, 'donor' || i || '@example.org', i || ' Main Street', 'Springfield', 'IL',
       '62701', 'US'
  FROM generate_series(1, :donors) i;
INSERT INTO pledge (donor_id, amount_minor, currency, start_on, next_charge_on)
SELECT id, 1000 + (id % 50) * 100, 'USD', '2026-01-05', '2027-01-05' FROM donor;
INSERT INTO charge (pledge_id, donor_id, period, amount_minor, currency, fund, due_at, status,
                    succeeded_at)
SELECT p.id, p.donor_id, m::date, p.amount_minor, 'USD', 'general', m, 'succeeded',
       m + interval '14 hours'
  FROM pledge p, generate_series('2026-01-05'::date, '2026-12-05', interval '1 month') m;
ANALYZE;
SQL

cat >"$work/pledged.conf" <<CONF
[billing]
timezone = America/New_York
[org]
legal_name = Friends of the Springfield Library, Inc.
address_line1 = 100 Main Street
city = Springfield
region = IL
postal_code = 62701
country = US
tax_id = 12-3456789
signatory_name = Jane Doe
signatory_title = Treasurer
receipt_dir = $work/out
CONF

run() { # label
  local t0 t1
  t0=$(date +%s.%N)
  ${BENCH_TIME:-} "$ctl" --config "$work/pledged.conf" --json receipts generate --year 2026 >"$work/$1.json"
  t1=$(date +%s.%N)
  python3 - "$work/$1.json" "$t0" "$t1" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
secs = float(sys.argv[3]) - float(sys.argv[2])
c = r['counts']
n = c['issued'] + c['replaced'] + c['unchanged']
print('%-10s issued=%d unchanged=%d in %.1f s: %.0f receipts/s'
      % (sys.argv[4], c['issued'], c['unchanged'], secs, n / secs))
PY
}
echo "donors=$donors gifts/donor=12 cores=$(nproc 2>/dev/null || echo '?') (server and client share them)"
run first
run rerun
echo "files: $(find "$work/out" -name '*.pdf' | wc -l) PDFs, $(du -sh "$work/out" | cut -f1)"
