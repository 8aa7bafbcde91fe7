#!/usr/bin/env python3
"""The store at scale, for `make bench`: one row per engine and size (BENCH_SCALE, orders,
comma-separated; 10 000 and 100 000 by default, `make bench-scale` adds 1 000 000).

Each row starts order-server (release build, pinned to one CPU like bench.py's servers) on a new
database, loads the orders through addOrders (bench-scale load), then measures:
  - getOrder requests/s (h2load, native, 16 connections x 16 streams);
  - searchOrders medians over a few runs: a rare term (one order), a term with no match (the whole
    answer), and the first result of a common term (every third order);
  - durable addOrder calls/s with 64 in flight (bench-adds, 4 connections x 16 streams), each with
    an idempotency key;
  - peak RSS, the database's size on disk, and the time from a restart to the first answer.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the same helpers: servers, PostgreSQL, h2load)

ROOT = bench.ROOT
SERVER_CPU, LOAD_CPU = 0, 1
SECONDS = int(os.environ.get("BENCH_DURATION", 3))
SEARCH_RUNS = 5


def run(command, timeout=3600):
    out = subprocess.run(["taskset", "-c", str(LOAD_CPU), *command], capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {out.stderr[-800:]}")
    return dict(field.split("=") for field in out.stdout.split())


def scale_tool():
    return str(ROOT / "target/release/bench-scale")


def database_size(url, postgres):
    if postgres:
        return int(postgres.psql("postgres", f"SELECT pg_database_size('{url.rsplit('/', 1)[1]}')"))
    path = Path(url.removeprefix("sqlite:"))
    return sum(f.stat().st_size for f in path.parent.glob(path.name + "*"))


def row(engine, size, url, postgres, body_file):
    command = [str(ROOT / "target/release/order-server"), "--listen", "127.0.0.1:{port}", "--database", url]
    start = lambda port: bench.Server(f"{engine} {size}", [c.format(port=port) for c in command], port,
                                      SERVER_CPU)
    port = bench.free_port()
    server = start(port)
    try:
        loaded = run([scale_tool(), "load", server.url, str(size)])
        gets = bench.h2load(server.url, "native", body_file, LOAD_CPU, duration=SECONDS)
        rare = run([scale_tool(), "search", server.url, "zanzibar", str(SEARCH_RUNS)])
        none = run([scale_tool(), "search", server.url, "no such thing", str(SEARCH_RUNS)])
        common = run([scale_tool(), "search", server.url, "common widget", "1"])
        adds = run([str(ROOT / "target/release/bench-adds"), server.url, str(SECONDS), "4", "16", "--keys"])
        rss = bench.peak_rss_kib(server.process.pid) / 1024
    finally:
        server.stop()
    size_mb = database_size(url, postgres) / 1e6
    began = time.monotonic()
    server = start(port)
    try:
        run([scale_tool(), "ready", server.url])
        restart_ms = (time.monotonic() - began) * 1000
    finally:
        server.stop()
    return {
        "load": size / float(loaded["seconds"]),
        "get": gets["rps"],
        "get_failed": gets["failed"],
        "rare": float(rare["whole_ms"]),
        "none": float(none["whole_ms"]),
        "common_first": float(common["first_ms"]),
        "adds": float(adds["rps"]),
        "adds_failed": int(adds["failed"]),
        "rss": rss,
        "size": size_mb,
        "restart": restart_ms,
    }


def main():
    sizes = [int(s) for s in os.environ.get("BENCH_SCALE", "10000,100000").split(",") if s]
    body_file = ROOT / "target/bench/get106.bin"
    body_file.parent.mkdir(parents=True, exist_ok=True)
    body_file.write_bytes(bench.GET_106)
    data = tempfile.mkdtemp(prefix="order-bench-scale-")
    postgres = bench.Postgres(SERVER_CPU)
    rows = []
    try:
        for engine in ("SQLite", "PostgreSQL"):
            for size in sizes:
                print(f"  scale: {engine}, {size} orders ...", file=sys.stderr, flush=True)
                if engine == "SQLite":
                    url, pg = f"sqlite:{data}/scale-{size}.db", None
                else:
                    postgres.psql("postgres", f"CREATE DATABASE scale_{size}")
                    url, pg = f"postgres://postgres@127.0.0.1:{postgres.port}/scale_{size}", postgres
                rows.append((engine, size, row(engine, size, url, pg, body_file)))
    finally:
        postgres.stop()
        shutil.rmtree(data, ignore_errors=True)

    print("\nThe store at scale (release build, server on one CPU; searches: medians of "
          f"{SEARCH_RUNS} runs, the common term's first result of one):")
    header = (f"{'store':<11} {'orders':>9} {'load/s':>8} {'getOrder/s':>11} {'rare ms':>9} {'none ms':>9} "
              f"{'common 1st ms':>14} {'addOrder/s':>11} {'RSS MB':>7} {'disk MB':>8} {'restart ms':>11}")
    print(header)
    print("-" * len(header))
    for engine, size, r in rows:
        print(f"{engine:<11} {size:>9} {r['load']:>8.0f} {r['get']:>11.0f} {r['rare']:>9.1f} {r['none']:>9.1f} "
              f"{r['common_first']:>14.1f} {r['adds']:>11.0f} {r['rss']:>7.1f} {r['size']:>8.1f} "
              f"{r['restart']:>11.0f}")
    failed = sum(r["get_failed"] + r["adds_failed"] for _, _, r in rows)
    print(f"  failed calls: {failed}. Targets at 1 000 000 orders on SQLite (#24): rare and no-match search "
          "< 50 ms, common first result < 10 ms, getOrder within 10 % of 10 000 orders, RSS < 48 MB, "
          "restart < 1 s; PostgreSQL within 2x of those searches; addOrder >= 20 000/s on SQLite and "
          ">= 10 000/s on PostgreSQL.")


if __name__ == "__main__":
    main()
