#!/usr/bin/env bash
# `make bench`: builds the three servers and the web client, then prints every figure from one run:
# the load table and ratios (bench.py), the store at scale (scale.py, BENCH_SCALE orders), and the
# web client's size and time to first order.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/env.sh"
cd "$root"

echo "building order-server, tonic alone and the hyper ceiling (release), the tutorial's Go server, the web client..." >&2
cargo build --release -q -p order-server -p bench-ceiling --bins
scripts/build-go.sh target/bench/go tutorial-server bench/tutorial-go/server bench/tutorial-go/order_management.proto
scripts/build-wasm.sh >/dev/null 2>&1 || scripts/build-wasm.sh

if [ "$(nproc)" -lt 2 ]; then
  echo "bench: needs 2 CPUs (one for the server, one for the load generator)" >&2
  exit 1
fi

python3 bench/bench.py "$@"
python3 bench/scale.py
echo
echo "Web client (static/pkg, wasm-release profile + wasm-opt) and page load, headless Chromium:"
(cd e2e && ORDER_SERVER_BIN=../target/release/order-server node page-budget.js --runs 20)
