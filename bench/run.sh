#!/usr/bin/env bash
# bench/run.sh — requests/s and latency of cedargate against nginx and the backend alone.
#
# Starts side by side on loopback (free ports, temporary data dirs):
#   backend    the embedded backend alone, on TCP (`cedargate bench backend`)
#   nginx      nginx (Debian package) as a plain reverse proxy to that backend
#   proxy_only cedargate with `[pipeline] enabled = false` (pingora, no stage at all)
#   pipeline   cedargate with the full pipeline: WAF, IP rate limit (limit raised), JWT, Cedar,
#              signed forwarding; otherwise the default config (audit and access log on)
# and drives each with wrk and bench/wrk/mix.lua (29 authorized GETs of four callers over 15
# routes, every answer must be a 2xx; the targets without the pipeline also get the pre-signed
# backend assertion the gateway would add, the full pipeline only the bearer token): first at
# maximum load, then at a fixed moderate rate (half of the full pipeline's maximum, the same rate
# for every target). Prints requests/s, p50/p99/p99.9 latency, the ratios to nginx and to the
# backend alone, and cedargate's idle RSS with the default config. Figures and the machine they
# were measured on: bench/README.md.
#
# Environment: DURATION (s per max-load run, default 15), RATE_DURATION (s per fixed-rate run,
# default 12), CONNECTIONS (max load, default 64), THREADS (wrk threads, default 2),
# RATE_DELAY_MS (mean pause per connection at fixed rate, default 10), BENCH_LOGS=1 keeps the
# servers' logs in the work dir (they are large: one access and one audit line per request),
# CEDARGATE_BIN runs that binary instead of building one, WORK_STEALING=false turns off
# `[server] work_stealing` in the two gateways, GATEWAY_THREADS sets their `[server] threads`
# (default 2), GATEWAY_LD_PRELOAD is preloaded into
# the two gateways only (e.g. an allocator: /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 from
# Debian's libjemalloc2; see bench/README.md). ONLY="backend pipeline" runs those targets alone
# (the backend always runs; ratios to a target left out are not printed), PERF_DATA=FILE records
# the full pipeline with `perf record` during its max-load run (PERF_TARGET=proxy_only records
# that gateway instead; PERF_CALL_GRAPH=dwarf for call chains through Rust code, which has no
# frame pointers).
# The whole run takes about 3 minutes after the build.
set -euo pipefail
shopt -s inherit_errexit

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DURATION="${DURATION:-15}"
RATE_DURATION="${RATE_DURATION:-12}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
RATE_DELAY_MS="${RATE_DELAY_MS:-10}"
WARMUP=2

log() { printf '%s\n' "$*" >&2; }

need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing ${need_apt[*]} (apt)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

if [ -n "${CEDARGATE_BIN:-}" ]; then
    BIN="$CEDARGATE_BIN"    # e.g. an older build, for a before/after comparison
else
    log "building the release binary"
    (cd "$ROOT" && cargo build --release -q -p gateway)
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/cedargate"
fi

WORK="$(mktemp -d -t cedargate-bench.XXXXXX)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 0.3
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports, all distinct (the kernel hands out a fresh ephemeral port per bind).
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
read -r P_BACKEND P_NGINX P_OFF P_OFF_AUTH P_OFF_ADMIN P_FULL P_FULL_AUTH P_FULL_ADMIN \
    P_IDLE P_IDLE_AUTH P_IDLE_ADMIN <<<"$(free_ports 11)"

out() { if [ "${BENCH_LOGS:-0}" = 1 ]; then echo "$WORK/$1.log"; else echo /dev/null; fi; }

wait_http() { # url, name
    local i
    for i in $(seq 1 200); do
        if curl -s -o /dev/null "$1"; then return 0; fi
        sleep 0.1
    done
    log "$2 did not come up ($1); rerun with BENCH_LOGS=1 and read $WORK/$2.log"
    exit 1
}

# The gateway configs: the default config with absolute policy paths, an external backend and
# the per-IP limit raised (as tests/src/gateway.rs raise_ip_limit does).
gateway_config() { # file, pipeline (true|false)
    sed -e "s|^dir = \"../policies\"|dir = \"$ROOT/policies\"|" \
        -e '/^\[rate_limit.ip\]/,/^limit = / s/^limit = 100$/limit = 1000000000/' \
        -e 's|^mode = "embedded".*|mode = "external"\naddress = "127.0.0.1:'"$P_BACKEND"'"|' \
        -e '/^socket = "backend.sock"/d' \
        -e "s/^work_stealing = true/work_stealing = ${WORK_STEALING:-true}/" \
        -e "s/^threads = 2 /threads = ${GATEWAY_THREADS:-2} /" \
        "$ROOT/config/cedargate.toml" >"$1"
    if [ "$2" = false ]; then printf '\n[pipeline]\nenabled = false\n' >>"$1"; fi
    grep -q '^limit = 1000000000' "$1" || { log "could not raise the IP limit in $1"; exit 1; }
}

mkdir -p "$WORK/backend" "$WORK/off" "$WORK/full" "$WORK/idle" "$WORK/nginx"
chmod 755 "$WORK"
gateway_config "$WORK/full.toml" true
gateway_config "$WORK/off.toml" false

log "starting the backend, two gateways and nginx"
"$BIN" bench backend --listen "127.0.0.1:$P_BACKEND" --data-dir "$WORK/backend" \
    >"$(out backend)" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$P_BACKEND/" backend
# The gateways sign assertions with the backend's secret.
cp "$WORK/backend/assertion.key" "$WORK/off/" && cp "$WORK/backend/assertion.key" "$WORK/full/"

LD_PRELOAD="${GATEWAY_LD_PRELOAD:-}" "$BIN" serve --config "$WORK/off.toml" --data-dir "$WORK/off" --api-addr "127.0.0.1:$P_OFF" \
    --auth-addr "127.0.0.1:$P_OFF_AUTH" --admin-addr "127.0.0.1:$P_OFF_ADMIN" \
    >"$(out off-audit)" 2>"$(out off)" &
PIDS+=($!)
OFF_PID=$!
LD_PRELOAD="${GATEWAY_LD_PRELOAD:-}" "$BIN" serve --config "$WORK/full.toml" --data-dir "$WORK/full" --api-addr "127.0.0.1:$P_FULL" \
    --auth-addr "127.0.0.1:$P_FULL_AUTH" --admin-addr "127.0.0.1:$P_FULL_ADMIN" \
    >"$(out full-audit)" 2>"$(out full)" &
PIDS+=($!)
FULL_PID=$!

NGINX_USER=""
[ "$(id -u)" -eq 0 ] && NGINX_USER="user root;"
cat >"$WORK/nginx/nginx.conf" <<EOF
# A plain reverse proxy, tuned as for production: as many workers as cedargate's threads,
# keep-alive to the backend, access log written (to /dev/null, like cedargate's here).
$NGINX_USER
worker_processes 2;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log /dev/null;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    keepalive_requests 100000;
    upstream backend {
        server 127.0.0.1:$P_BACKEND;
        keepalive 128;
    }
    server {
        listen 127.0.0.1:$P_NGINX;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
EOF
"$NGINX" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" >"$(out nginx)" 2>&1 &
PIDS+=($!)

wait_http "http://127.0.0.1:$P_OFF_ADMIN/readyz" off
wait_http "http://127.0.0.1:$P_FULL_ADMIN/readyz" full
wait_http "http://127.0.0.1:$P_NGINX/" nginx

"$BIN" bench http-mix --config "$WORK/full.toml" --data-dir "$WORK/full" \
    --assertion-data-dir "$WORK/backend" >"$WORK/mix.tsv"

declare -A URL=(
    [backend]="http://127.0.0.1:$P_BACKEND"
    [nginx]="http://127.0.0.1:$P_NGINX"
    [proxy_only]="http://127.0.0.1:$P_OFF"
    [pipeline]="http://127.0.0.1:$P_FULL"
)
TARGETS=(backend nginx proxy_only pipeline)
if [ -n "${ONLY:-}" ]; then
    read -r -a TARGETS <<<"backend ${ONLY//backend/}"
    [[ " ${TARGETS[*]} " == *" pipeline "* ]] || { log "ONLY must name pipeline"; exit 1; }
fi

# The targets without the pipeline get the pre-signed assertion the gateway would have added;
# clients of the full pipeline send only their bearer token.
assertion_for() { if [ "$1" = pipeline ]; then echo 0; else echo 1; fi; }

# Every request of the mix must be answered 200 by every target, or the comparison is void.
while IFS=$'\t' read -r method path token assertion; do
    for t in "${TARGETS[@]}"; do
        extra=()
        [ "$(assertion_for "$t")" = 1 ] && extra=(-H "X-Cedargate-Assertion: $assertion")
        code=$(curl -s -o /dev/null -w '%{http_code}' -X "$method" \
            -H "Authorization: Bearer $token" "${extra[@]}" "${URL[$t]}$path")
        if [ "$code" != 200 ]; then
            log "$t answered $code to $method $path"
            exit 1
        fi
    done
done <"$WORK/mix.tsv"
log "$(wc -l <"$WORK/mix.tsv") requests in the mix, each answered 200 by every target"

RSS_AFTER_START=$(awk '/^VmRSS/ {print $2}' "/proc/$FULL_PID/status")

# run_wrk target connections duration [mean delay ms] -> "rps p50 p99 p999" (µs)
run_wrk() {
    local target=$1 conns=$2 secs=$3 delay=${4:-}
    local threads=$THREADS
    [ "$conns" -lt "$threads" ] && threads=$conns
    local result
    result=$(CEDARGATE_BENCH_MIX="$WORK/mix.tsv" CEDARGATE_BENCH_DELAY_MS="$delay" \
        CEDARGATE_BENCH_ASSERTION="$(assertion_for "$target")" \
        timeout $((secs + 30)) wrk -t "$threads" -c "$conns" -d "${secs}s" --timeout 5s \
        -s "$ROOT/bench/wrk/mix.lua" "${URL[$target]}/" | grep '^RESULT')
    local requests duration p50 p99 p999 errors
    requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$result")
    duration=$(sed -E 's/.*duration_us=([0-9]+).*/\1/' <<<"$result")
    p50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$result")
    p99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$result")
    p999=$(sed -E 's/.*p999_us=([0-9]+).*/\1/' <<<"$result")
    errors=$(grep -oE 'errors_[a-z]+=[0-9]+' <<<"$result" | awk -F= '{s+=$2} END {print s+0}')
    if [ "$errors" != 0 ]; then
        log "$target: $errors failed or non-2xx answers: $result"
        exit 1
    fi
    echo "$(awk -v r="$requests" -v d="$duration" 'BEGIN {printf "%.0f", r / (d / 1e6)}') $p50 $p99 $p999"
}

# CPU time (user + system, clock ticks) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A CPU_PID=([proxy_only]="$OFF_PID" [pipeline]="$FULL_PID")
ms() { awk -v u="$1" 'BEGIN {printf "%.3f ms", u / 1000}'; }
ratio() { if [ -z "$2" ]; then echo "–"; else awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f×", a / b}'; fi; }

log "max load: $CONNECTIONS connections, $THREADS wrk threads, ${DURATION}s per target (+${WARMUP}s warm-up)"
declare -A RPS P50 P99 P999 CPU_US
for t in "${TARGETS[@]}"; do
    res=$(run_wrk "$t" "$CONNECTIONS" "$WARMUP")
    PERF_PID=""
    if [ "$t" = "${PERF_TARGET:-pipeline}" ] && [ -n "${PERF_DATA:-}" ]; then
        perf record -q -F 999 --call-graph "${PERF_CALL_GRAPH:-fp}" -p "${CPU_PID[$t]}" -o "$PERF_DATA" -- sleep "$DURATION" 2>/dev/null &
        PERF_PID=$!
    fi
    ticks=0
    [ -n "${CPU_PID[$t]:-}" ] && ticks=$(cpu_ticks "${CPU_PID[$t]}")
    res=$(run_wrk "$t" "$CONNECTIONS" "$DURATION")
    [ -n "$PERF_PID" ] && wait "$PERF_PID"
    read -r "RPS[$t]" "P50[$t]" "P99[$t]" "P999[$t]" <<<"$res"
    if [ -n "${CPU_PID[$t]:-}" ]; then
        # The gateway's CPU time per request (µs) over the run: its own cost, whatever the
        # load generator and the backend took from the shared cores.
        CPU_US[$t]=$(awk -v t="$(( $(cpu_ticks "${CPU_PID[$t]}") - ticks ))" -v hz="$(getconf CLK_TCK)" \
            -v r="${RPS[$t]}" -v d="$DURATION" 'BEGIN {printf "%.0f", t / hz * 1e6 / (r * d)}')
        log "  $t: ${RPS[$t]} req/s, ${CPU_US[$t]} µs of gateway CPU per request"
    else
        log "  $t: ${RPS[$t]} req/s"
    fi
done
RSS_AFTER_LOAD=$(awk '/^VmRSS/ {print $2}' "/proc/$FULL_PID/status")

RATE=$((RPS[pipeline] / 2))
RATE_CONNS=$(awk -v r="$RATE" -v d="$RATE_DELAY_MS" 'BEGIN {c = int(r * d / 1000 + 0.5); print (c < 1 ? 1 : c)}')
log "fixed rate: ~$RATE req/s offered to each target ($RATE_CONNS connections, mean pause ${RATE_DELAY_MS} ms), ${RATE_DURATION}s each"
declare -A R_RPS R_P50 R_P99 R_P999
for t in "${TARGETS[@]}"; do
    res=$(run_wrk "$t" "$RATE_CONNS" "$RATE_DURATION" "$RATE_DELAY_MS")
    read -r "R_RPS[$t]" "R_P50[$t]" "R_P99[$t]" "R_P999[$t]" <<<"$res"
    log "  $t: ${R_RPS[$t]} req/s, p99 $(ms "${R_P99[$t]}")"
done

# Idle RSS with the default config as shipped (embedded backend in the same process).
sed -e "s|^dir = \"../policies\"|dir = \"$ROOT/policies\"|" "$ROOT/config/cedargate.toml" \
    >"$WORK/idle.toml"
"$BIN" serve --config "$WORK/idle.toml" --data-dir "$WORK/idle" --api-addr "127.0.0.1:$P_IDLE" \
    --auth-addr "127.0.0.1:$P_IDLE_AUTH" --admin-addr "127.0.0.1:$P_IDLE_ADMIN" \
    >/dev/null 2>&1 &
PIDS+=($!)
IDLE_PID=$!
wait_http "http://127.0.0.1:$P_IDLE_ADMIN/readyz" idle
sleep 2
RSS_IDLE=$(awk '/^VmRSS/ {print $2}' "/proc/$IDLE_PID/status")

echo
echo "## Maximum load ($CONNECTIONS connections, ${DURATION}s, $(wc -l <"$WORK/mix.tsv") authorized GETs rotated)"
echo
echo "| target | requests/s | p50 | p99 | p99.9 | vs nginx | vs backend alone |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for t in "${TARGETS[@]}"; do
    echo "| $t | ${RPS[$t]} | $(ms "${P50[$t]}") | $(ms "${P99[$t]}") | $(ms "${P999[$t]}") | $(ratio "${RPS[$t]}" "${RPS[nginx]:-}") | $(ratio "${RPS[$t]}" "${RPS[backend]}") |"
done
echo
echo "## Fixed rate (~$RATE req/s offered = half of the full pipeline's maximum; $RATE_CONNS connections, exponential pauses of mean ${RATE_DELAY_MS} ms)"
echo
echo "| target | achieved req/s | p50 | p99 | p99.9 | p99 added vs backend alone |"
echo "|---|---:|---:|---:|---:|---:|"
for t in "${TARGETS[@]}"; do
    echo "| $t | ${R_RPS[$t]} | $(ms "${R_P50[$t]}") | $(ms "${R_P99[$t]}") | $(ms "${R_P999[$t]}") | $(ms $((R_P99[$t] - R_P99[backend]))) |"
done
echo
echo "## Goals"
echo
if [ -n "${ONLY:-}" ]; then
    echo "(ONLY=$ONLY: not every target ran)"
    for t in proxy_only pipeline; do
        [ -n "${CPU_US[$t]:-}" ] && echo "- gateway CPU per request at max load, $t: ${CPU_US[$t]} µs"
    done
    echo "- idle RSS, default config: $((RSS_IDLE / 1024)) MiB"
    echo "- full-pipeline gateway RSS: $((RSS_AFTER_START / 1024)) MiB after start and the mix check, $((RSS_AFTER_LOAD / 1024)) MiB after the max-load runs"
    exit 0
fi
awk -v full="${RPS[pipeline]}" -v nginx="${RPS[nginx]}" -v off="${RPS[proxy_only]}" \
    -v added="$((R_P99[pipeline] - R_P99[backend]))" -v rss="$RSS_IDLE" 'BEGIN {
    verdict = "met"; if (full < nginx) verdict = "NOT met"
    printf "- full pipeline vs nginx: %.2f× (goal ≥ 1.0×): %s\n", full / nginx, verdict
    verdict = "met"; if (full < 0.85 * off) verdict = "NOT met"
    printf "- full pipeline vs pipeline off: %.2f× (goal ≥ 0.85×): %s\n", full / off, verdict
    verdict = "met"; if (added > 1000) verdict = "NOT met"
    printf "- p99 added vs backend alone at half load: %.3f ms (goal ≤ 1 ms): %s\n", added / 1000, verdict
    verdict = "met"; if (rss > 65536) verdict = "NOT met"
    printf "- idle RSS, default config: %.1f MiB (goal ≤ 64 MB): %s\n", rss / 1024, verdict
}'
echo "- gateway CPU per request at max load: proxy_only ${CPU_US[proxy_only]} µs, pipeline ${CPU_US[pipeline]} µs"
echo "- full-pipeline gateway RSS: $((RSS_AFTER_START / 1024)) MiB after start and the mix check, $((RSS_AFTER_LOAD / 1024)) MiB after the max-load runs"
echo "- gateways' LD_PRELOAD: ${GATEWAY_LD_PRELOAD:-none}"
echo "- machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load generator and servers on the same cores; $(date -u +%Y-%m-%d)"
