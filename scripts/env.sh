# Sourced by the scripts in this folder: where the project's tools are and which toolchain builds wasm.
# shellcheck shell=bash
root=${root:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export PATH="$HOME/.cargo/bin:$root/e2e/node_modules/.bin:$PATH"
# Debian's chromedriver; wasm-pack must never download one.
export CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver}
export CHROME_BIN=${CHROME_BIN:-/usr/bin/chromium}

# ORDER_WASM_TOOLCHAIN=debian forces the Debian rustc-web route even where rustup has the target
# (to check that route on a machine where rustup's works).
rustup_has_wasm() {
  [ "${ORDER_WASM_TOOLCHAIN:-}" != debian ] &&
    command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown
}

# True when some toolchain here can build for wasm32-unknown-unknown.
wasm_toolchain_ready() {
  rustup_has_wasm && return 0
  [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] &&
    compgen -G "$(/usr/bin/rustc --print sysroot)/lib/rustlib/wasm32-unknown-unknown/lib/libstd-*.rlib" >/dev/null
}

# Runs a command with the toolchain that has the wasm32 target first on PATH: rustup's when it has
# the target, else Debian's rustc-web (see shared TOOLCHAIN notes). Both share one target/ folder.
with_wasm_toolchain() {
  if rustup_has_wasm; then
    "$@"
  else
    # Debian's rustc-web has no rust-lld of its own: link with Debian's wasm-ld (package lld-22).
    local wasm_ld
    wasm_ld=$(compgen -G "/usr/lib/llvm-*/bin/wasm-ld" | sort -V | tail -1)
    PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
      CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER="${CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER:-$wasm_ld}" "$@"
  fi
}
