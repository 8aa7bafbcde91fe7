# The whole project in a few commands. `make run` and `make test` install whatever is missing first.
SHELL := /usr/bin/env bash
.DEFAULT_GOAL := help
export PATH := $(HOME)/.cargo/bin:$(PATH)

# Extra flags for `make run`, e.g. make run ARGS="--cors-origin http://localhost:8080"
ARGS ?=

.PHONY: help setup wasm run test test-rust test-vendor test-wasm test-types test-e2e test-interop lint page-budget bench bench-scale

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

setup: ## One-time installs (idempotent; quick when all is present)
	@scripts/setup.sh

wasm: setup ## Build the web client into static/pkg/ (optimized for size, wasm-opt)
	@scripts/build-wasm.sh

run: setup wasm ## Build everything and serve http://127.0.0.1:50051 in the foreground
	cargo build --release -q -p order-server
	@echo "Open http://127.0.0.1:50051/?id=106 (Ctrl-C stops the server)"
	./target/release/order-server $(ARGS)

test: setup lint test-rust test-vendor test-wasm test-types test-e2e test-interop ## Every test: Rust, wasm and the page in Chromium, other clients

lint: ## cargo fmt --check, clippy with warnings as errors, and the server's docs with no broken link
	cargo fmt --all --check
	cargo clippy -q --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc -q -p order-server --no-deps --document-private-items

test-rust: ## Unit, in-process and live-server tests of the server, client and CLI
	cargo test -q --workspace

test-vendor: ## The patched crates' own tests (vendor/h2's; its HPACK fixtures are not on crates.io)
	CARGO_TARGET_DIR=$(CURDIR)/target cargo test -q --manifest-path vendor/h2/Cargo.toml --lib -- --skip hpack::test::fixture

test-wasm: setup ## wasm-pack test --headless --chrome against a live server
	@scripts/test-wasm.sh

test-types: setup wasm ## tsc --noEmit over a typed example of the web client's whole JavaScript surface
	e2e/node_modules/.bin/tsc -p web-client/ts

test-e2e: setup wasm ## The page in headless Chromium and Firefox, driven like a person would; Node's http clients against refusals; Connect-ES
	cargo build -q -p order-server
	cd e2e && node --test

test-interop: setup ## Clients written by others: Python grpcio and buf curl (reflection, gRPC-Web)
	cargo build -q -p order-server
	.venv/bin/python -m unittest discover -s interop -v

page-budget: setup wasm ## Measure the web client's gzipped size and time to first order on screen
	cargo build --release -q -p order-server
	cd e2e && ORDER_SERVER_BIN=../target/release/order-server node page-budget.js --screenshots ../docs

bench: ## Throughput and footprint against the tutorial's Go server and a hyper ceiling; the store at 10 000 and 100 000 orders
	@scripts/setup.sh bench
	@bench/run.sh

bench-scale: ## The store at 10 000, 100 000 and 1 000 000 orders, on SQLite and PostgreSQL (takes a while)
	@scripts/setup.sh bench
	cargo build --release -q -p order-server -p bench-ceiling --bins
	BENCH_SCALE=$${BENCH_SCALE:-10000,100000,1000000} python3 bench/scale.py
