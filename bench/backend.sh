#!/usr/bin/env bash
# bench/backend.sh — requests/s of the backend through the full gateway pipeline, on the
# embedded store and on a DynamoDB-compatible server (moto, single-threaded, on loopback).
#
# For each store it starts `cedargate serve` (default config, per-IP limit raised, embedded
# backend with `[backend] store = ...`) and drives it with wrk and bench/wrk/backend.lua:
#   reads   a read-heavy mix of end-user GETs (missions, a mission, catalog, levels, badges,
#           the all-time and weekly leaderboards, points, me) for five users of ws-demo
#   awards  M2M `POST points` to 50 users of a workspace of its own (each award is one
#           transaction: balance, ledger entry, activity; then levels and badges)
# and prints requests/s, p50 and p99 and the count of non-2xx answers (must be 0). After the
# award run it checks that the balances add up to the awards wrk counted as answered.
#
# Environment: DURATION (s per run, default 10), CONNECTIONS (default 16), THREADS (default 2).
# Figures and the machine they were measured on: bench/README.md.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-16}"
THREADS="${THREADS:-2}"
log() { printf '%s\n' "$*" >&2; }

if ! command -v wrk >/dev/null; then
    log "installing wrk (apt)"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
fi
python3 -c 'import moto' 2>/dev/null || {
    log "installing moto[server] (pip)"
    pip3 install -q 'moto[server]' || pip3 install -q --break-system-packages 'moto[server]'
}

log "building the release binary"
(cd "$ROOT" && cargo build --release -q -p gateway)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/cedargate"

WORK="$(mktemp -d -t cedargate-bench-backend.XXXXXX)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 0.3
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

wait_http() { # url, what, pid
    for _ in $(seq 1 300); do
        curl -sf -o /dev/null "$1" && return 0
        kill -0 "$3" 2>/dev/null || { log "$2 exited; its log:"; cat "$WORK/$2.log" >&2; exit 1; }
        sleep 0.1
    done
    log "$2 did not come up ($1)"; exit 1
}

read -r P_MOTO <<<"$(free_ports 1)"
# Single-threaded moto: each request atomic, as DynamoDB's are (see scripts/test.sh).
python3 -c 'import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
run_simple(sys.argv[1], int(sys.argv[2]), DomainDispatcherApplication(create_backend_app), threaded=False)' \
    127.0.0.1 "$P_MOTO" >"$WORK/moto.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$P_MOTO") 2>/dev/null && break; sleep 0.1; done

config() { # file, store
    sed -e "s|^dir = \"../policies\"|dir = \"$ROOT/policies\"|" \
        -e '/^\[rate_limit.ip\]/,/^limit = / s/^limit = 100$/limit = 1000000000/' \
        "$ROOT/config/cedargate.toml" >"$1"
    if [ "$2" = dynamodb ]; then
        sed -i -e 's/^store = "embedded"/store = "dynamodb"/' \
            -e 's/^create_tables_on_start = false/create_tables_on_start = true/' \
            -e "s|^# endpoint = \"http://127.0.0.1:8000\"|endpoint = \"http://127.0.0.1:$P_MOTO\"|" \
            -e 's/^timeout_ms = 1000 /timeout_ms = 10000 /' "$1"
        grep -q '^store = "dynamodb"' "$1" || { log "could not switch $1 to DynamoDB"; exit 1; }
    fi
    grep -q '^limit = 1000000000' "$1" || { log "could not raise the IP limit in $1"; exit 1; }
}

run_wrk() { # name, url, request file, connections
    CEDARGATE_BENCH_REQUESTS="$3" wrk -t"$THREADS" -c"$4" -d"${DURATION}s" \
        -s "$ROOT/bench/wrk/backend.lua" "$2" | grep '^RESULT' | sed "s/^RESULT/$1/"
}

ROWS=()
for store in embedded dynamodb; do
    read -r P_API P_AUTH P_ADMIN <<<"$(free_ports 3)"
    mkdir -p "$WORK/$store"
    config "$WORK/$store.toml" "$store"
    "$BIN" serve --config "$WORK/$store.toml" --data-dir "$WORK/$store" \
        --api-addr "127.0.0.1:$P_API" --auth-addr "127.0.0.1:$P_AUTH" \
        --admin-addr "127.0.0.1:$P_ADMIN" >/dev/null 2>"$WORK/$store.log" &
    pid=$!
    PIDS+=("$pid")
    wait_http "http://127.0.0.1:$P_ADMIN/readyz" "$store" "$pid"
    mint() { "$BIN" token mint --config "$WORK/$store.toml" --data-dir "$WORK/$store" --claims "$1"; }

    reads="$WORK/$store-reads.tsv"
    : >"$reads"
    for role in Viewer Member Manager Admin Owner; do
        user="u-$(echo "$role" | tr 'A-Z' 'a-z')"
        token="$(mint "{\"sub\":\"$user\",\"userId\":\"$user\",\"workspaceId\":\"ws-demo\",\"role\":\"$role\",\"context\":\"app\",\"platform\":\"web\",\"onboardingCompleted\":true}")"
        for path in missions missions/mission-welcome catalog levels badges \
            leaderboards/leaderboard-all-time leaderboards/leaderboard-weekly points me; do
            printf 'GET\t/app/v1/workspaces/ws-demo/%s\t%s\t-\n' "$path" "$token" >>"$reads"
        done
    done
    awards="$WORK/$store-awards.tsv"
    machine="$(mint '{"sub":"svc-bench","client_id":"svc-bench","workspaceId":"ws-bench","platform":"m2m","scope":"app/write app/read"}')"
    : >"$awards"
    for i in $(seq 1 50); do
        printf 'POST\t/app/v1/workspaces/ws-bench/points\t%s\t{"userId":"u-%d","points":1,"reason":"bench"}\n' \
            "$machine" "$i" >>"$awards"
    done

    log "$store: reads"
    read_row="$(run_wrk reads "http://127.0.0.1:$P_API" "$reads" "$CONNECTIONS")"
    log "$store: awards"
    award_row="$(run_wrk awards "http://127.0.0.1:$P_API" "$awards" "$CONNECTIONS")"
    # Every answered award is in the balances: the sum of all balances equals the 2xx count.
    answered=$(sed -E 's/.*requests=([0-9]+).*errors_status=([0-9]+).*/\1 \2/' <<<"$award_row" | awk '{print $1-$2}')
    manager="$(mint '{"sub":"u-boss","userId":"u-boss","workspaceId":"ws-bench","role":"Admin","context":"dashboard","platform":"web"}')"
    board=$(curl -s -H "Authorization: Bearer $manager" -H 'Content-Type: application/json' \
        -d '{"name":"all","period":"all-time"}' \
        "http://127.0.0.1:$P_API/dashboard/v1/workspaces/ws-bench/leaderboards" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    total=$(curl -s -H "Authorization: Bearer $manager" \
        "http://127.0.0.1:$P_API/dashboard/v1/workspaces/ws-bench/leaderboards/$board?limit=100" |
        python3 -c 'import json,sys; print(sum(e["points"] for e in json.load(sys.stdin)["entries"]))')
    ROWS+=("$store $read_row" "$store $award_row awarded_sum=$total answered=$answered")
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
done

printf '\n%-9s %-7s %10s %9s %9s %7s\n' store mix req/s p50_ms p99_ms non2xx
for row in "${ROWS[@]}"; do
    read -r store mix rest <<<"$row"
    eval "$(tr ' ' '\n' <<<"$rest" | grep '=' | sed 's/^/local_/')"
    rps=$(awk -v n="$local_requests" -v d="$local_duration_us" 'BEGIN{printf "%.0f", n/(d/1e6)}')
    printf '%-9s %-7s %10s %9.2f %9.2f %7s' "$store" "$mix" "$rps" \
        "$(awk -v x="$local_p50_us" 'BEGIN{print x/1000}')" "$(awk -v x="$local_p99_us" 'BEGIN{print x/1000}')" \
        "$((local_errors_status + local_errors_socket))"
    if [ "$mix" = awards ]; then printf '   balances sum %s for %s answered' "$local_awarded_sum" "$local_answered"; fi
    printf '\n'
    unset local_requests local_duration_us local_p50_us local_p99_us local_errors_status local_errors_socket local_awarded_sum local_answered
done
