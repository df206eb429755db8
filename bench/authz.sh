#!/usr/bin/env bash
# Decision time of the gateway's own authorization code (mapping + Cedar), in process:
# the default pack, the default pack behind the decision cache, and the pack plus 1,000 and
# 10,000 generated tenant policies. Not a test: prints a table for bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p gateway
./target/release/cedargate bench authz --policies policies --iterations "${ITERATIONS:-50000}"
