#!/usr/bin/env bash
# Token cache latency over loopback HTTP: a cache hit, against a miss that goes to the
# upstream IdP. The "IdP" is a second cedargate serving its embedded issuer (argon2id secret
# check + RS256 signing); the gateway under test runs config/examples/upstream-idp.toml in
# front of it, once with the cache and once with `cache = false` (every request a miss).
# Not a test: prints rows for bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p gateway
bin=./target/release/cedargate
work=$(mktemp -d -t cedargate-bench-token.XXXXXX)
cleanup() {
  for f in "$work"/*.pid; do [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

serve() { # name config env...
  local name=$1 config=$2; shift 2
  local api auth admin; api=$(port); auth=$(port); admin=$(port)
  env "$@" CEDARGATE_LOG=warn "$bin" serve --config "$config" --data-dir "$work/$name" \
    --api-addr "127.0.0.1:$api" --auth-addr "127.0.0.1:$auth" --admin-addr "127.0.0.1:$admin" \
    >"$work/$name.log" 2>&1 &
  echo $! >"$work/$name.pid"
  wait_port "$auth"
  echo "$auth"
}

# The IdP answers every request itself (its own cache off): each call costs what a miss costs.
idpconf="$work/idp.toml"
sed -e 's/^cache = true/cache = false/' -e "s|^dir = \"../policies\"|dir = \"$PWD/policies\"|" \
  config/cedargate.toml >"$idpconf"
idp=$(serve idp "$idpconf")
idp_url="http://127.0.0.1:$idp"
nocache="$work/nocache.toml"
sed 's/^\[token_proxy\]$/[token_proxy]\ncache = false/' config/examples/upstream-idp.toml >"$nocache"
sed -i "s|^dir = \"../../policies\"|dir = \"$PWD/policies\"|" "$nocache"
cached=$(serve cached config/examples/upstream-idp.toml UPSTREAM_IDP_URL="$idp_url" UPSTREAM_IDP_ISSUER="$idp_url")
uncached=$(serve uncached "$nocache" UPSTREAM_IDP_URL="$idp_url" UPSTREAM_IDP_ISSUER="$idp_url")

requests=${REQUESTS:-2000}
seconds=${SECONDS_PER_RUN:-5}
echo "| path | p50 | p99 | throughput |"
echo "|---|---:|---:|---:|"
"$bin" bench token --label "cache hit (gateway, upstream mode)" --url "http://127.0.0.1:$cached/oauth2/token" \
  --requests "$requests" --seconds "$seconds"
"$bin" bench token --label "miss (gateway, cache off, to the IdP)" --url "http://127.0.0.1:$uncached/oauth2/token" \
  --requests "$(( requests / 10 ))" --seconds "$seconds" --concurrency 4
"$bin" bench token --label "the IdP directly (argon2id + RS256)" --url "$idp_url/oauth2/token" \
  --requests "$(( requests / 10 ))" --seconds "$seconds" --concurrency 4
