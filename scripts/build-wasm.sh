#!/usr/bin/env bash
# `make wasm`: builds the web client into static/pkg/ (optimized for size, then by wasm-opt) for the page.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/env.sh"
# wasm-opt comes from npm's binaryen (e2e/node_modules/.bin, on PATH via env.sh): wasm-pack uses the
# one on PATH instead of downloading its own.
command -v wasm-opt >/dev/null || { echo "wasm-opt missing: run make setup" >&2; exit 1; }
cd "$root/web-client"
# The wasm-release profile (Cargo.toml) optimizes every crate in the module for size.
with_wasm_toolchain wasm-pack build --profile wasm-release --target web --no-pack --out-dir "$root/static/pkg" "$@"
# The JS glue minified (terser, from npm like wasm-opt): wasm-bindgen writes it with every exported
# method's doc comment, which the page never reads (TypeScript users read them in the .d.ts, kept
# whole): 8.7 -> 5.6 KB gzipped. A source map beside it serves the browser's developer tools.
command -v terser >/dev/null || { echo "terser missing: run make setup" >&2; exit 1; }
glue="$root/static/pkg/order_web_client.js"
terser "$glue" --module --compress --mangle \
  --source-map "url='order_web_client.js.map',filename='order_web_client.js'" -o "$glue.min"
mv "$glue.min" "$glue"
mv "$glue.min.map" "$glue.map"
# The client's JavaScript snippets (`inline_js`, under pkg/snippets/) likewise.
for snippet in "$root"/static/pkg/snippets/*/*.js; do
  [ -e "$snippet" ] || continue
  terser "$snippet" --module --compress --mangle -o "$snippet.min"
  mv "$snippet.min" "$snippet"
done
# Brotli and gzip copies beside each file, which the server sends to browsers that accept them.
node "$root/scripts/precompress.mjs" "$root/static/pkg"
