#!/bin/sh
# Requests/second of the mock gateway with no latency configured.
# Prints figures; asserts nothing (DESIGN §7).
#
#   PLEDGE_BUILD_DIR=build-mock tests/bench/mock_rps.sh [seconds] [connections]
#
# Uses pledged-gateway-mock-load (built with the mock; one keep-alive
# connection per thread, one request in flight each). If ApacheBench (ab) is
# installed, a GET figure from ab -k is printed as a cross-check.
set -eu

: "${PLEDGE_BUILD_DIR:?set PLEDGE_BUILD_DIR to the meson build directory}"
SECONDS_PER_RUN=${1:-5}
CONNECTIONS=${2:-8}
MOCK="$PLEDGE_BUILD_DIR/tests/gateway-mock/pledged-gateway-mock"
LOAD="$PLEDGE_BUILD_DIR/tests/gateway-mock/pledged-gateway-mock-load"
for b in "$MOCK" "$LOAD"; do
    [ -x "$b" ] || { echo "mock_rps: $b missing; run ninja -C $PLEDGE_BUILD_DIR" >&2; exit 1; }
done

DIR=$(mktemp -d)
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

echo sk_test_mock > "$DIR/key"
"$MOCK" --quiet --seed 1 --port 0 --port-file "$DIR/port" --api-key-file "$DIR/key" \
    >/dev/null &
PID=$!
i=0
while [ ! -s "$DIR/port" ]; do
    i=$((i + 1))
    [ $i -gt 500 ] && { echo "mock_rps: mock did not start" >&2; exit 1; }
    sleep 0.01
done
PORT=$(cat "$DIR/port")

echo "mock_rps: $(nproc) CPUs, server and load generator share them"
echo "mock_rps: POST /v1/payment_intents (new idempotency key each, state grows):"
"$LOAD" --port "$PORT" --connections "$CONNECTIONS" --seconds "$SECONDS_PER_RUN" --mode post
echo "mock_rps: GET /v1/payment_intents?limit=1:"
"$LOAD" --port "$PORT" --connections "$CONNECTIONS" --seconds "$SECONDS_PER_RUN" --mode get

if command -v ab >/dev/null 2>&1; then
    echo "mock_rps: cross-check with ab -k (GET):"
    ab -q -k -c "$CONNECTIONS" -t "$SECONDS_PER_RUN" -n 10000000 \
        -H "Authorization: Bearer sk_test_mock" \
        "http://127.0.0.1:$PORT/v1/payment_intents?limit=1" 2>&1 |
        grep -E 'Requests per second|Failed requests|Non-2xx' || true
else
    echo "mock_rps: ab not installed; skipping the cross-check"
fi
