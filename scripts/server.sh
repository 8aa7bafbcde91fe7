# Sourced by test scripts: start and stop an order-server on a free loopback port.
# shellcheck shell=bash

# A port nothing listens on right now (the kernel's pick for 127.0.0.1:0).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# start_server [order-server flags...]: builds if needed, starts on 127.0.0.1:0 with a new SQLite
# database of its own, waits until it listens and sets SERVER_URL and SERVER_PID. The log goes to
# $SERVER_LOG; stop_server deletes the database.
start_server() {
  local bin="${ORDER_SERVER_BIN:-$root/target/debug/order-server}"
  if [ -z "${ORDER_SERVER_BIN:-}" ]; then
    (cd "$root" && cargo build -q -p order-server --bin order-server)
  fi
  SERVER_LOG=$(mktemp)
  SERVER_DATA=$(mktemp -d)
  RUST_LOG=${RUST_LOG:-info} "$bin" --listen 127.0.0.1:0 --database "sqlite:$SERVER_DATA/orders.db" "$@" 2>"$SERVER_LOG" &
  SERVER_PID=$!
  local address=""
  for _ in $(seq 1 200); do
    address=$(grep -o 'address=[0-9.:]*' "$SERVER_LOG" | head -1 | cut -d= -f2 || true)
    [ -n "$address" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$SERVER_LOG" >&2; echo "order-server did not start" >&2; return 1; }
    sleep 0.1
  done
  [ -n "$address" ] || { cat "$SERVER_LOG" >&2; echo "order-server did not report its address" >&2; return 1; }
  SERVER_URL="http://$address"
  echo "order-server listening on $SERVER_URL (log: $SERVER_LOG)"
}

stop_server() {
  if [ -n "${SERVER_PID:-}" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  [ -z "${SERVER_DATA:-}" ] || rm -rf "$SERVER_DATA"
}
