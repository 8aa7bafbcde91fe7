#!/usr/bin/env bash
# `make test-wasm`: runs the web client's wasm-bindgen tests in headless Chromium against a live
# order-server that this script starts on a free loopback port and stops afterwards.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/env.sh"
source "$root/scripts/server.sh"

# The test page's address is fixed for this run so the server can allow it as a CORS origin.
page_port=$(free_port)
unreachable_port=$(free_port)
# A second server checks tokens; the tests get tokens for it from `order-server token`.
secret_dir=$(mktemp -d)
echo "wasm test secret" >"$secret_dir/secret"
start_server --cors-origin "http://127.0.0.1:$page_port" --auth-secret-file "$secret_dir/secret"
auth_pid=$SERVER_PID auth_data=$SERVER_DATA
export ORDER_AUTH_SERVER_URL="$SERVER_URL"
bin="${ORDER_SERVER_BIN:-$root/target/debug/order-server}"
ORDER_READ_TOKEN=$("$bin" token --secret-file "$secret_dir/secret" --scope orders:read --subject wasm-test)
ORDER_WRITE_TOKEN=$("$bin" token --secret-file "$secret_dir/secret" --scope orders:write --subject wasm-test)
export ORDER_READ_TOKEN ORDER_WRITE_TOKEN
start_server --cors-origin "http://127.0.0.1:$page_port"
trap 'stop_server; kill -TERM "$auth_pid" 2>/dev/null; rm -rf "$secret_dir" "$auth_data"' EXIT

export WASM_BINDGEN_TEST_ADDRESS="127.0.0.1:$page_port"
export WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-60}
export ORDER_SERVER_URL="$SERVER_URL"
export ORDER_UNREACHABLE_URL="http://127.0.0.1:$unreachable_port"
cd "$root/web-client"
with_wasm_toolchain wasm-pack test --headless --chrome "$@"
