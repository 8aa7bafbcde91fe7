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
# A third serves TLS (a self-signed certificate; webdriver.json has Chromium accept it), where the
# browser streams uploads over HTTP/2.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$secret_dir/key.pem" -out "$secret_dir/cert.pem" 2>/dev/null
start_server --cors-origin "http://127.0.0.1:$page_port" \
  --tls-cert "$secret_dir/cert.pem" --tls-key "$secret_dir/key.pem"
tls_pid=$SERVER_PID tls_data=$SERVER_DATA
export ORDER_TLS_SERVER_URL="https://${SERVER_URL#http://}"
start_server --cors-origin "http://127.0.0.1:$page_port"
trap 'stop_server; kill -TERM "$auth_pid" "$tls_pid" 2>/dev/null; rm -rf "$secret_dir" "$auth_data" "$tls_data"' EXIT

export WASM_BINDGEN_TEST_ADDRESS="127.0.0.1:$page_port"
export WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-60}
export ORDER_SERVER_URL="$SERVER_URL"
export ORDER_UNREACHABLE_URL="http://127.0.0.1:$unreachable_port"
cd "$root/web-client"
with_wasm_toolchain wasm-pack test --headless --chrome "$@"
