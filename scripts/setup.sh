#!/usr/bin/env bash
# One-time installs for building, running and testing the project.
#
# Idempotent: every step checks first and does nothing when its tool is already there, so a second
# run takes a second or two. Works offline except for the package registries (crates.io, npm, Debian):
# nothing here downloads a prebuilt binary from anywhere else.
#
#   scripts/setup.sh            everything `make run` and `make test` need
#   scripts/setup.sh bench      also what `make bench` needs (h2load, Go for the tutorial's server)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/env.sh
source "$root/scripts/env.sh"

say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

# Debian packages ---------------------------------------------------------------------------------
apt_updated=""
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -z "$apt_updated" ]; then
    say "apt-get update"
    $sudo apt-get update -qq
    apt_updated=1
  fi
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Chromium and its WebDriver, for `wasm-pack test --headless --chrome` and the end-to-end test;
# Firefox ESR, the second engine of the end-to-end test (puppeteer-core over WebDriver BiDi).
apt_install chromium chromium-driver firefox-esr

# PostgreSQL, for the tests of the PostgreSQL store (and `make bench`): the tests start clusters of
# their own with initdb, so the package's own "main" cluster is not wanted (and is not made when
# the package is installed here).
if ! dpkg-query -W -f='${Status}' postgresql 2>/dev/null | grep -q "install ok installed" &&
  [ ! -e /etc/postgresql-common/createcluster.conf ] && [ "$(id -u)" -eq 0 ]; then
  mkdir -p /etc/postgresql-common
  echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
fi
apt_install postgresql

# Go and grpc-go, the tutorial's own stack: its server for the benchmark, and a client for the
# interop tests (Debian's packages, built offline in GOPATH mode).
apt_install golang-go golang-google-grpc-dev golang-google-protobuf-dev \
  golang-github-golang-protobuf-1-5-dev protoc-gen-go protoc-gen-go-grpc protobuf-compiler

if [ "${1:-}" = "bench" ]; then
  apt_install nghttp2-client util-linux
fi

# The wasm32 standard library ---------------------------------------------------------------------
# rustup's own target is all a normal machine needs. Where rustup's download server cannot be
# reached, Debian's rustc-web (which has the wasm32 backend) gets a wasm32 std built once from
# Debian's rust-web-src. scripts/env.sh picks whichever toolchain has the target.
if ! wasm_toolchain_ready; then
  if [ "${ORDER_WASM_TOOLCHAIN:-}" != debian ] && command -v rustup >/dev/null &&
    timeout 30 rustup target add wasm32-unknown-unknown >/dev/null 2>&1; then
    say "installed rustup target wasm32-unknown-unknown"
  else
    say "rustup cannot fetch wasm32-unknown-unknown; building its std with Debian's rustc-web"
    apt_install rustc-web cargo-web rust-web-src lld-22
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    mkdir -p "$scratch/src"
    printf '[package]\nname = "wasm-std"\nversion = "0.0.0"\nedition = "2021"\n[workspace]\n' >"$scratch/Cargo.toml"
    : >"$scratch/src/lib.rs"
    (cd "$scratch" && RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 /usr/bin/cargo build -q --release \
      -Zbuild-std=std,panic_abort,panic_unwind,test --target wasm32-unknown-unknown)
    sysroot_lib="$(/usr/bin/rustc --print sysroot)/lib/rustlib/wasm32-unknown-unknown/lib"
    mkdir -p "$sysroot_lib"
    cp "$scratch"/target/wasm32-unknown-unknown/release/deps/*.rlib "$sysroot_lib/"
  fi
  wasm_toolchain_ready || { echo "setup: the wasm32 target is still missing" >&2; exit 1; }
fi

# Cargo tools -------------------------------------------------------------------------------------
# `--locked` first, for the versions the tool's authors tested; a registry mirror can lack one of
# those exact versions, so fall back to the newest compatible ones.
cargo_install() {
  cargo install -q --locked "$@" || cargo install -q "$@"
}
# wasm-bindgen-cli must be the exact version of the wasm-bindgen crate in Cargo.lock.
bindgen_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$root/Cargo.lock")
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$bindgen_version" ]; then
  say "installing wasm-bindgen-cli $bindgen_version (a few minutes, once)"
  cargo_install --force wasm-bindgen-cli --version "$bindgen_version"
fi
if ! command -v wasm-pack >/dev/null; then
  say "installing wasm-pack (a few minutes, once)"
  cargo_install wasm-pack --version 0.15.1
fi

# npm tools: wasm-opt (binaryen), playwright-core, puppeteer-core, buf (for the interop tests) and typescript ----------------
if [ ! -f "$root/e2e/node_modules/.package-lock.json" ] ||
  [ "$root/e2e/package-lock.json" -nt "$root/e2e/node_modules/.package-lock.json" ]; then
  say "npm install in e2e/"
  # `npm install` with the committed lock file, not `npm ci`: buf's per-platform optional packages
  # for other systems are not all in the lock, which `npm ci` refuses.
  (cd "$root/e2e" && npm install --no-audit --no-fund --loglevel=error)
fi

# Python grpcio for the interop tests, in the project's own virtualenv ------------------------------
venv="$root/.venv"
if [ ! -f "$venv/.installed" ] || [ "$root/interop/requirements.txt" -nt "$venv/.installed" ]; then
  say "creating .venv with grpcio (interop tests)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$root/interop/requirements.txt"
  touch "$venv/.installed"
fi

say "all set"
