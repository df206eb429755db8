#!/usr/bin/env bash
# Run every test of cedargate on a fresh machine: installs what the build and the tests need,
# builds the workspace once, then runs unit and end-to-end tests (the real binary on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)   # the TLS tests make certificates
if ((${#need_apt[@]})); then
  echo "==> installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The DynamoDB tier is tested against moto's DynamoDB-compatible server (token-proxy/tests/
# dynamodb.rs): install it when missing, start it on a free loopback port, stop it on exit.
if ! command -v moto_server >/dev/null 2>&1; then
  echo "==> installing moto[server]"
  command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1 || {
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-pip >/dev/null
  }
  PIP="$(command -v pip3 || command -v pip)"
  "$PIP" install -q 'moto[server]' || "$PIP" install -q --break-system-packages 'moto[server]'
  hash -r
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
  command -v moto_server >/dev/null 2>&1 || export PATH="$HOME/.local/bin:$PATH"
fi
moto_cmd=(moto_server)
command -v moto_server >/dev/null 2>&1 || moto_cmd=(python3 -m moto.server)
moto_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
moto_log="$(mktemp -t cedargate-moto.XXXXXX.log)"
# Single-threaded, so each request is atomic as DynamoDB's are (threaded moto checks a
# condition apart from its write and loses concurrent updates).
python3 -c 'import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
run_simple(sys.argv[1], int(sys.argv[2]), DomainDispatcherApplication(create_backend_app), threaded=False)' 127.0.0.1 "$moto_port" >"$moto_log" 2>&1 &
moto_pid=$!
trap 'kill "$moto_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$moto_port") 2>/dev/null && break
  kill -0 "$moto_pid" 2>/dev/null || { echo "moto_server exited:"; cat "$moto_log"; exit 1; }
  sleep 0.1
done
export CEDARGATE_TEST_DYNAMODB_ENDPOINT="http://127.0.0.1:$moto_port"
echo "==> moto_server on $CEDARGATE_TEST_DYNAMODB_ENDPOINT"

# CI builds once from a clean clone: incremental artifacts would only cost disk and time.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"; fi
# A clean debug build of every target takes a few GB; a full disk shows up as a linker crash
# (SIGBUS), so say it before building.
avail_mb=$(df -Pm . | awk 'NR == 2 {print $4}')
if [ "${avail_mb:-0}" -lt 6144 ]; then
  echo "warning: only ${avail_mb} MB free on $(df -P . | awk 'NR == 2 {print $6}'); a clean build needs ~4 GB"
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> build"
cargo build --locked --workspace --all-targets

echo "==> tests"
export CEDARGATE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/cedargate"
log=$(mktemp)
set +e
cargo test --locked --workspace --lib --bins --tests -- --test-threads="${TEST_THREADS:-4}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
rm -f "$log"
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
