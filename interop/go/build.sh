#!/usr/bin/env bash
# Builds interop/go/main.go (the tiny-orders client on grpc-go) with Debian's Go packages, offline
# (GOPATH mode: the Go module proxy is not reachable here), from the project's proto (its go_package).
# Usage: build.sh OUT_DIR   -> OUT_DIR/tiny-orders
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
gopath="$out/gopath"
pkg="$gopath/src/service/order_management"
rm -rf "$gopath" && mkdir -p "$pkg" "$gopath/src/tiny-orders"
protoc -I "$root/proto" -I /usr/include \
  --go_out="$pkg" --go_opt=paths=source_relative \
  --go-grpc_out="$pkg" --go-grpc_opt=paths=source_relative \
  "$root/proto/order_management.proto"
cp "$here/main.go" "$gopath/src/tiny-orders/"
cd "$gopath/src/tiny-orders"
GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOFLAGS=-mod=mod GOCACHE="$out/gocache" \
  go build -o "$out/tiny-orders" .
