#!/usr/bin/env bash
# Builds a Go program on the tutorial's stack (grpc-go) with Debian's Go packages, offline (GOPATH
# mode: the Go module proxy is not reachable here), with the code protoc generates from PROTO as
# the package `order_management`, as the tutorial imports it.
# Usage: build-go.sh OUT_DIR NAME MAIN_DIR PROTO   -> OUT_DIR/NAME, from MAIN_DIR/main.go
# (the benchmark's tutorial server, the interop tests' grpc-go client).
set -euo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd)
name=$2
main=$(cd "$3" && pwd)
proto_dir=$(cd "$(dirname "$4")" && pwd)
proto=$(basename "$4")
gopath="$out/gopath-$name"
pkg="$gopath/src/order_management"
rm -rf "$gopath" && mkdir -p "$pkg" "$gopath/src/$name"
# The tutorial runs `protoc --go_out=plugins=grpc`; today's plugins split that into two.
protoc -I "$proto_dir" -I /usr/include \
  --go_out="$pkg" --go_opt=paths=source_relative \
  --go-grpc_out="$pkg" --go-grpc_opt=paths=source_relative,require_unimplemented_servers=false \
  "$proto_dir/$proto"
cp "$main/main.go" "$gopath/src/$name/"
cd "$gopath/src/$name"
GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOFLAGS=-mod=mod GOCACHE="$out/gocache" \
  go build -o "$out/$name" .
