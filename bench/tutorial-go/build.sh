#!/usr/bin/env bash
# Builds the tutorial's Go server with Debian's Go packages, offline (GOPATH mode: the Go module proxy
# is not reachable here). Usage: build.sh OUT_DIR   -> OUT_DIR/tutorial-server
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
gopath="$out/gopath"
pkg="$gopath/src/order_management"
rm -rf "$gopath" && mkdir -p "$pkg" "$gopath/src/tutorial-server"
# The tutorial runs `protoc --go_out=plugins=grpc`; today's plugins split that into two.
protoc -I "$here" -I /usr/include \
  --go_out="$pkg" --go_opt=paths=source_relative \
  --go-grpc_out="$pkg" --go-grpc_opt=paths=source_relative,require_unimplemented_servers=false \
  "$here/order_management.proto"
cp "$here/server/main.go" "$gopath/src/tutorial-server/"
cd "$gopath/src/tutorial-server"
GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOFLAGS=-mod=mod GOCACHE="$out/gocache" \
  go build -o "$out/tutorial-server" .
