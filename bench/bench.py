#!/usr/bin/env python3
"""`make bench`: getOrder under load, order-server against the tutorial's Go server, tonic alone
(its generated server with a fixed answer) and a bare hyper ceiling, in one run that prints one
table and the ratios; then order-server on PostgreSQL (getOrder) and durable addOrder throughput
on both stores.

order-server runs with its default durable store, a SQLite file (in a temporary folder), as
`make run` does. The PostgreSQL figures use a cluster of the benchmark's own (Debian's package,
default durable settings: fsync and synchronous_commit on), pinned to the server's CPU.

Each server runs pinned to CPU 0 and h2load to CPU 1 (taskset). The servers of the getOrder
table (and order-server with TLS) are all up at once; for each cell, each server gets a warm-up,
then ROUNDS rounds in which every server runs DURATION seconds in turn, in an order rotated each
round. The table shows medians; the ratios are medians of the per-round ratios, so a machine that
slows down for a while (a noisy neighbour, steal time) moves both sides of a ratio alike. Each
target's ratio also says in how many rounds it was reached and gives a bootstrap 90% interval of
its median: on a shared machine a verdict near the line is a coin toss, and this shows it. The
stores' cells run one server at a time. Measured per run:
requests/s (h2load), server CPU time per request (/proc/PID/stat before and after), failed calls
(transport errors, non-2xx, and gRPC errors under HTTP 200, counted from the response bytes:
every successful answer carries the order, a failed one does not) and, per server, peak RSS
(VmHWM).
"""

import argparse
import os
import random
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The tutorial's service has no proto package, so its methods are at /OrderManagement/<method>.
SERVICE = "OrderManagement"

# StringValue{"106"} in a gRPC frame: the request every getOrder call sends.
GET_106 = b"\x00\x00\x00\x00\x05\x0a\x03106"

# Order{items: ["Bench item"], price: 1, destination: "Bench, CA"} without an ID (the server
# assigns one), in a gRPC frame: the request every addOrder call sends.
BENCH_DESTINATION = "Bench, CA"
_ORDER = b"\x12\x0aBench item" + b"\x25" + struct.pack("<f", 1.0) + b"\x2a\x09" + BENCH_DESTINATION.encode()
ADD_ORDER = b"\x00" + struct.pack(">I", len(_ORDER)) + _ORDER

CELLS = {
    "native": {
        "title": "native gRPC, h2c, 16 conns x 16 streams",
        "args": ["-c", "16", "-m", "16", "-H", "content-type: application/grpc", "-H", "te: trailers"],
    },
    "web": {
        "title": "gRPC-Web, HTTP/1.1, 64 conns",
        "args": ["--h1", "-c", "64", "-m", "1", "-H", "content-type: application/grpc-web+proto",
                 "-H", "x-grpc-web: 1"],
    },
    # The Connect protocol with JSON, as curl and Connect-ES send it: the body is the string "106".
    "connect": {
        "title": "Connect JSON, HTTP/1.1, 64 conns",
        "args": ["--h1", "-c", "64", "-m", "1", "-H", "content-type: application/json"],
        "body": b'"106"',
    },
    "add": {
        "title": "addOrder, native, 4 conns x 4 streams",
        "args": ["-c", "4", "-m", "4", "-H", "content-type: application/grpc", "-H", "te: trailers"],
        "method": "addOrder",
    },
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, process, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start listening")


def cpu_ticks(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def peak_rss_kib(pid):
    match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1))


def h2load(url, cell, body_file, cpu, duration=None, requests=None):
    args = CELLS[cell]["args"]
    body_file = CELLS[cell].get("body_file", body_file)
    if requests == 1:
        # One call on one connection: h2load wants at least as many requests as clients.
        args = [a if args[i - 1] not in ("-c", "-m") else "1" for i, a in enumerate(args)]
    command = ["taskset", "-c", str(cpu), "h2load", *args, "-d", str(body_file)]
    command += ["-D", str(duration)] if duration else ["-n", str(requests)]
    command.append(f"{url}/{SERVICE}/{CELLS[cell].get('method', 'getOrder')}")
    out = subprocess.run(command, capture_output=True, text=True, timeout=600).stdout
    number = lambda pattern: float(re.search(pattern, out).group(1))
    return {
        "rps": number(r"finished in [\d.]+\w*, ([\d.]+) req/s"),
        "done": int(number(r"requests: \d+ total, \d+ started, (\d+) done")),
        "failed": int(number(r"(\d+) failed")) + int(number(r"(\d+) errored")) + int(number(r"(\d+) timeout")),
        "non2xx": sum(int(n) for n in re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out).groups()),
        "data": data_bytes(out),
        "raw": out,
    }


def data_bytes(out):
    # "traffic: 1.2MB (1234567) total, 10KB (10240) headers (space savings 95%), 1MB (1048576) data"
    match = re.search(r"\((\d+)\) data", out)
    return int(match.group(1))


class Postgres:
    """A PostgreSQL cluster of the benchmark's own in a temporary folder, with PostgreSQL's default
    (durable) settings. initdb refuses root, so as root it runs as the postgres user."""

    def __init__(self, cpu):
        bindir = max(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)).parent
        self.pg_ctl = str(bindir / "pg_ctl")
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.dir = tempfile.mkdtemp(prefix="order-bench-pg-")
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        self.data = f"{self.dir}/data"
        self.port = free_port()
        subprocess.run([*self.as_postgres, str(bindir / "initdb"), "-D", self.data, "-U", "postgres",
                        "--auth=trust"], check=True, capture_output=True)
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        subprocess.run([*self.as_postgres, "taskset", "-c", str(cpu), self.pg_ctl, "-D", self.data,
                        "-l", f"{self.dir}/postgres.log", "-w", "-o", options, "start"],
                       check=True, capture_output=True)
        self.psql("postgres", "CREATE DATABASE orders")
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/orders"

    def psql(self, database, sql):
        return subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d",
                               database, "-tAc", sql], check=True, capture_output=True, text=True).stdout

    def stop(self):
        subprocess.run([*self.as_postgres, self.pg_ctl, "-D", self.data, "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def count_bench_orders(database_url, postgres):
    """How many addOrder calls of the benchmark the database kept."""
    sql = f"SELECT count(*) FROM orders WHERE destination = '{BENCH_DESTINATION}'"
    if postgres:
        return int(postgres.psql("orders", sql))
    import sqlite3
    with sqlite3.connect(database_url.removeprefix("sqlite:")) as db:
        return db.execute(sql).fetchone()[0]


class Server:
    def __init__(self, name, command, port, cpu):
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "RUST_LOG": "warn"}
        self.process = subprocess.Popen(["taskset", "-c", str(cpu), *command], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(port, self.process)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=20)


def probe(server, cell, body_file, args):
    """The response bytes of one successful call, to count the calls of a run that did not carry
    the order."""
    result = h2load(server.url, cell, body_file, args.load_cpu, requests=1)
    if result["done"] != 1 or result["non2xx"] or result["failed"]:
        raise RuntimeError(f"{server.name} does not answer {cell} calls:\n{result['raw']}")
    return result["data"]


def run_once(server, cell, body_file, per_call, args):
    """One measured run of `cell` against `server`."""
    before = cpu_ticks(server.process.pid)
    result = h2load(server.url, cell, body_file, args.load_cpu, duration=args.duration)
    ticks = cpu_ticks(server.process.pid) - before
    answered = result["data"] // per_call if per_call else 0
    return {
        "rps": result["rps"],
        "cpu_us": ticks / CLK_TCK * 1e6 / max(result["done"], 1),
        "failed": max(result["done"] - answered, 0) + result["failed"] + result["non2xx"],
    }


def summary(runs):
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "cpu_us": statistics.median(r["cpu_us"] for r in runs),
        "failed": sum(r["failed"] for r in runs),
        "rounds": [round(r["rps"]) for r in runs],
    }


def measure(server, cell, body_file, args):
    """ROUNDS runs of `cell` against one server, one after another."""
    per_call = probe(server, cell, body_file, args)
    h2load(server.url, cell, body_file, args.load_cpu, duration=args.warmup)
    return summary([run_once(server, cell, body_file, per_call, args) for _ in range(args.rounds)])


def measure_alternated(entries, body_file, args):
    """ROUNDS rounds in which every (server, cell) entry runs once, in an order rotated each round,
    so that no server always runs first or last and a machine that slows down for a while slows
    every server's round alike. Returns each entry's summary and its runs, round by round."""
    per_call = {}
    for server, cell in entries:
        per_call[(server.name, cell)] = probe(server, cell, body_file, args)
        h2load(server.url, cell, body_file, args.load_cpu, duration=args.warmup)
    runs = {(server.name, cell): [] for server, cell in entries}
    for round_ in range(args.rounds):
        print(f"  round {round_ + 1} of {args.rounds} ...", file=sys.stderr, flush=True)
        shift = round_ % len(entries)
        for server, cell in entries[shift:] + entries[:shift]:
            key = (server.name, cell)
            runs[key].append(run_once(server, cell, body_file, per_call[key], args))
    return {key: {**summary(r), "runs": r} for key, r in runs.items()}


def round_ratios(results, a, b):
    """a's requests/s over b's, round by round."""
    return [x["rps"] / y["rps"] for x, y in zip(results[a]["runs"], results[b]["runs"])]


def per_round_ratio(results, a, b):
    """The median over rounds of a's requests/s over b's in the same round."""
    return statistics.median(round_ratios(results, a, b))


def median_interval(values, confidence=0.9, resamples=2000):
    """A bootstrap interval of the median of `values`: how far another run of as many rounds
    might put it on this machine. Seeded, so the same rounds always give the same interval."""
    pick = random.Random(0)
    medians = sorted(statistics.median(pick.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1 - confidence) / 2
    return medians[int(tail * resamples)], medians[int((1 - tail) * resamples) - 1]


def measure_adds(server, body_file, args):
    """Durable addOrder calls per second. The calls that failed are counted from the database
    afterwards: every call h2load saw done must have left its order there."""
    runs = []
    for _ in range(args.rounds):
        before = cpu_ticks(server.process.pid)
        result = h2load(server.url, "add", body_file, args.load_cpu, duration=args.duration)
        ticks = cpu_ticks(server.process.pid) - before
        runs.append({**result, "cpu_us": ticks / CLK_TCK * 1e6 / max(result["done"], 1)})
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "cpu_us": statistics.median(r["cpu_us"] for r in runs),
        "done": sum(r["done"] for r in runs),
        "failed": sum(r["failed"] + r["non2xx"] for r in runs),
        "rounds": [round(r["rps"]) for r in runs],
    }


def measure_keyed_adds(server, args):
    """Durable addOrder calls per second from a tonic client (bench-adds, 4 connections x 16
    streams: the 64 calls in flight of #24's target, as in scale.py), without and with an
    idempotency key on every call, and one call at a time (one connection, one call in flight:
    the latency of a write on an idle server), taking turns round by round on the same server."""
    runs = {"no key": [], "keys": [], "one at a time": []}
    for _ in range(args.rounds):
        for variant, calls in runs.items():
            shape = ["1", "1"] if variant == "one at a time" else ["4", "16"]
            command = ["taskset", "-c", str(args.load_cpu), args.bench_adds, server.url,
                       str(args.duration), *shape, *(["--keys"] if variant == "keys" else [])]
            before = cpu_ticks(server.process.pid)
            out = subprocess.run(command, capture_output=True, text=True, timeout=args.duration + 60)
            ticks = cpu_ticks(server.process.pid) - before
            fields = dict(field.split("=") for field in out.stdout.split())
            if "done" not in fields:
                raise RuntimeError(f"bench-adds failed: {out.stderr[-500:]}")
            done = int(fields["done"])
            calls.append({"rps": float(fields["rps"]), "done": done, "failed": int(fields["failed"]),
                          "cpu_us": ticks / CLK_TCK * 1e6 / max(done, 1)})
    return {
        variant: {
            "rps": statistics.median(r["rps"] for r in calls),
            "cpu_us": statistics.median(r["cpu_us"] for r in calls),
            "done": sum(r["done"] for r in calls),
            "failed": sum(r["failed"] for r in calls),
            "rounds": [round(r["rps"]) for r in calls],
        }
        for variant, calls in runs.items()
    }


def check_answers(server, cell, body_file):
    """Order 106 with grpc-status 0, asked the way the load generator asks."""
    body_file = CELLS[cell].get("body_file", body_file)
    headers = {
        "web": ["-H", "content-type: application/grpc-web+proto"],
        "connect": ["-H", "content-type: application/json"],
    }.get(cell, ["--http2-prior-knowledge", "-H", "content-type: application/grpc", "-H", "te: trailers"])
    out = subprocess.run(["curl", "-sS", "-i", "--data-binary", f"@{body_file}", *headers,
                          f"{server.url}/{SERVICE}/getOrder"], capture_output=True, timeout=10).stdout
    if b"Apple iPhone XS" not in out:
        raise RuntimeError(f"{server.name} did not return order 106 over {cell}: {out[:300]!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 9)))
    parser.add_argument("--duration", type=int, default=int(os.environ.get("BENCH_DURATION", 3)),
                        help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per server and cell")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--order-server", default=str(ROOT / "target/release/order-server"))
    parser.add_argument("--ceiling", default=str(ROOT / "target/release/bench-ceiling"))
    parser.add_argument("--tonic", default=str(ROOT / "target/release/bench-tonic"))
    parser.add_argument("--go-server", default=str(ROOT / "target/bench/go/tutorial-server"))
    parser.add_argument("--bench-adds", default=str(ROOT / "target/release/bench-adds"))
    args = parser.parse_args()

    body_file = ROOT / "target/bench/get106.bin"
    body_file.parent.mkdir(parents=True, exist_ok=True)
    body_file.write_bytes(GET_106)
    add_file = ROOT / "target/bench/add-order.bin"
    add_file.write_bytes(ADD_ORDER)
    for cell in CELLS.values():
        if "body" in cell:
            cell["body_file"] = ROOT / "target/bench" / f"{cell['title'].split()[0].lower()}.body"
            cell["body_file"].write_bytes(cell["body"])

    # The default durable store, as `make run` uses it, in a folder of the benchmark's own.
    data = tempfile.mkdtemp(prefix="order-bench-")
    sqlite_url = f"sqlite:{data}/orders.db"
    order_server = lambda port, database: [args.order_server, "--listen", f"127.0.0.1:{port}",
                                           "--database", database]

    servers = [
        ("order-server", lambda port: order_server(port, sqlite_url), ["native", "web", "connect"]),
        # The same server without /metrics, to measure what recording them costs per call.
        ("no metrics", lambda port: order_server(port, f"sqlite:{data}/quiet.db") + ["--no-metrics"],
         ["native", "web"]),
        # The same app with an axum Router at the top, to measure the hand-written top level.
        ("axum Router", lambda port: order_server(port, f"sqlite:{data}/router.db") + ["--axum-router"],
         ["native", "web"]),
        ("tutorial Go", lambda port: [args.go_server, f"127.0.0.1:{port}"], ["native"]),
        # tonic's generated server (and tonic-web) with a fixed answer, served as the ceiling is:
        # what tonic itself costs over hyper, so what order-server's own work costs over tonic.
        ("tonic alone", lambda port: [args.tonic, f"127.0.0.1:{port}"], ["native", "web"]),
        ("hyper ceiling", lambda port: [args.ceiling, f"127.0.0.1:{port}"], ["native", "web"]),
    ]
    # Native getOrder over TLS with a token (authentication on), beside the plaintext cell.
    tls_dir = tempfile.mkdtemp(prefix="order-bench-tls-")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", f"{tls_dir}/key.pem",
                    "-out", f"{tls_dir}/cert.pem"], check=True, capture_output=True)
    Path(f"{tls_dir}/secret").write_text("bench secret\n")
    token = subprocess.run([args.order_server, "token", "--secret-file", f"{tls_dir}/secret", "--scope",
                            "orders:read", "--subject", "bench"], check=True, capture_output=True,
                           text=True).stdout.strip()
    CELLS["tls"] = {
        "title": "native gRPC, TLS + token, 16 conns x 16 streams",
        "args": [*CELLS["native"]["args"], "-H", f"authorization: Bearer {token}"],
    }
    CELLS["token"] = {
        "title": "native gRPC with a token, 16 conns x 16 streams",
        "args": CELLS["tls"]["args"],
    }
    tls_flags = ["--tls-cert", f"{tls_dir}/cert.pem", "--tls-key", f"{tls_dir}/key.pem"]
    auth_flags = ["--auth-secret-file", f"{tls_dir}/secret"]
    # Each with its twin: a token checked against none, over plaintext and over TLS (target: the
    # token costs at most 5 %, thanks to the cache of verified tokens).
    twins = {
        "TLS + token": (order_server(0, f"sqlite:{data}/tls.db") + tls_flags + auth_flags, "tls", "https"),
        "TLS": (order_server(0, f"sqlite:{data}/tls-plain.db") + tls_flags, "native", "https"),
        "token": (order_server(0, f"sqlite:{data}/token.db") + auth_flags, "token", "http"),
    }

    # Every server of the table is up at once, all on the server CPU (an idle one costs nothing),
    # and the rounds alternate between them: see measure_alternated.
    running = {}
    results = {}
    try:
        for name, command, cells in servers:
            port = free_port()
            running[name] = Server(name, command(port), port, args.server_cpu)
            for cell in cells:
                check_answers(running[name], cell, body_file)
        for name, (command, _, scheme) in twins.items():
            port = free_port()
            command = [f"127.0.0.1:{port}" if arg == "127.0.0.1:0" else arg for arg in command]
            running[name] = Server(name, command, port, args.server_cpu)
            running[name].url = f"{scheme}://127.0.0.1:{port}"
        for cell in ("native", "web"):
            entries = [(running[name], cell) for name, _, cells in servers if cell in cells]
            if cell == "native":
                entries.extend((running[name], twin_cell) for name, (_, twin_cell, _) in twins.items())
            if cell == "web":
                # Connect's JSON getOrder takes its turns with the gRPC-Web cell, which it is beside.
                entries.append((running["order-server"], "connect"))
            print(f"  measuring {CELLS[cell]['title']}: {', '.join(s.name for s, _ in entries)}, "
                  "rounds alternated ...", file=sys.stderr, flush=True)
            results.update(measure_alternated(entries, body_file, args))
        for name, server in running.items():
            rss = peak_rss_kib(server.process.pid) / 1024
            for (each, _), r in results.items():
                if each == name:
                    r["rss_mib"] = rss
    finally:
        for server in running.values():
            server.stop()
        shutil.rmtree(tls_dir, ignore_errors=True)
    tls_key = ("TLS + token", "tls")

    # order-server on PostgreSQL: getOrder (no cache: other servers may change any order), then
    # addOrder on both stores, each on a new database.
    postgres = Postgres(args.server_cpu)
    stores = {}
    try:
        port = free_port()
        server = Server("order-server (PostgreSQL)", order_server(port, postgres.url), port, args.server_cpu)
        try:
            check_answers(server, "native", body_file)
            print("  measuring order-server on PostgreSQL, getOrder ...", file=sys.stderr, flush=True)
            stores["postgres get"] = measure(server, "native", body_file, args)
        finally:
            server.stop()
        for store, url in [("sqlite", f"sqlite:{data}/adds.db"), ("postgres", postgres.url)]:
            port = free_port()
            server = Server(f"order-server ({store})", order_server(port, url), port, args.server_cpu)
            try:
                print(f"  measuring addOrder on {store} ...", file=sys.stderr, flush=True)
                adds = measure_adds(server, add_file, args)
                kept = count_bench_orders(url, postgres if store == "postgres" else None)
                adds["failed"] += max(adds["done"] - kept, 0)
                print(f"  measuring addOrder on {store}, tonic client without and with keys ...",
                      file=sys.stderr, flush=True)
                keyed = measure_keyed_adds(server, args)
            finally:
                server.stop()
            # Every call a client saw succeed must have left its order: none lost.
            added = sum(keyed[variant]["done"] for variant in keyed)
            lost = max(kept + added - count_bench_orders(url, postgres if store == "postgres" else None), 0)
            keyed["keys"]["failed"] += lost
            stores[f"{store} add"] = adds
            stores[f"{store} add, no key"] = keyed["no key"]
            stores[f"{store} add, keys"] = keyed["keys"]
            stores[f"{store} add, one at a time"] = keyed["one at a time"]
    finally:
        postgres.stop()
        shutil.rmtree(data, ignore_errors=True)

    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    print(f"Machine: {os.cpu_count()} cores ({cpu.group(1) if cpu else 'unknown CPU'}), "
          f"{os.uname().sysname} {os.uname().release}")
    print(f"Servers pinned to CPU {args.server_cpu}, h2load to CPU {args.load_cpu}; per server and cell "
          f"{args.warmup} s warm-up, then {args.rounds} rounds of {args.duration} s, the servers of a cell "
          "taking turns within each round; medians.\n")
    header = f"{'cell':<42} {'server':<14} {'req/s':>9} {'CPU µs/req':>11} {'failed':>7} {'peak RSS':>9}"
    print(header)
    print("-" * len(header))
    for cell in ("native", "web"):
        first = True
        for name, _, cells in servers:
            title = CELLS[cell]["title"] if first else ""
            first = False
            if cell not in cells:
                print(f"{title:<42} {name:<14} {'n/a (no gRPC-Web: the tutorial puts Envoy in front)':>40}")
                continue
            r = results[(name, cell)]
            print(f"{title:<42} {name:<14} {r['rps']:>9.0f} {r['cpu_us']:>11.1f} {r['failed']:>7} {r['rss_mib']:>7.1f} MB")
    print()

    def ratio(a, b, cell, target):
        ratios = round_ratios(results, (a, cell), (b, cell))
        value = statistics.median(ratios)
        verdict = "met" if value >= target else "NOT met"
        low, high = median_interval(ratios)
        held = sum(r >= target for r in ratios)
        return (f"{value:.3f}x (target >= {target}x: {verdict}; reached in {held} of {len(ratios)} rounds; "
                f"90% interval {low:.2f}-{high:.2f}x)")

    print("Ratios of requests/s (medians of the per-round ratios):")
    print(f"  native gRPC: order-server / tutorial Go   = {ratio('order-server', 'tutorial Go', 'native', 1.3)}")
    print(f"  native gRPC: order-server / hyper ceiling = {ratio('order-server', 'hyper ceiling', 'native', 0.8)}")
    print(f"  gRPC-Web:    order-server / hyper ceiling = {ratio('order-server', 'hyper ceiling', 'web', 0.8)}")
    for cell in ("native", "web"):
        tonic, ceiling = results[("tonic alone", cell)], results[("hyper ceiling", cell)]
        ours = results[("order-server", cell)]
        print(f"  {cell}: tonic alone / hyper ceiling = "
              f"{per_round_ratio(results, ('tonic alone', cell), ('hyper ceiling', cell)):.2f}x; "
              f"order-server / tonic alone = "
              f"{per_round_ratio(results, ('order-server', cell), ('tonic alone', cell)):.2f}x "
              f"({ours['cpu_us'] - tonic['cpu_us']:+.2f} µs CPU per call for the store, layers and logging)")
    failed = sum(r["failed"] for (name, _), r in results.items() if name == "order-server")
    rss = max(r["rss_mib"] for (name, _), r in results.items() if name == "order-server")
    print(f"  order-server: {failed} failed calls (target 0); peak RSS {rss:.1f} MB (target < 20 MB)")
    for cell in ("native", "web"):
        with_metrics, without = results[("order-server", cell)], results[("no metrics", cell)]
        print(f"  {cell}: metrics cost {with_metrics['cpu_us'] - without['cpu_us']:+.2f} µs CPU per call "
              f"({(1 - per_round_ratio(results, ('order-server', cell), ('no metrics', cell))) * 100:+.1f}% "
              "of req/s against --no-metrics)")
    for cell in ("native", "web"):
        cost = 1 - per_round_ratio(results, ("axum Router", cell), ("order-server", cell))
        print(f"  {cell}: an axum Router at the top costs {cost * 100:.1f}% of order-server's req/s "
              f"(the hand-written top level stays only if > 5%)")

    connect = results[("order-server", "connect")]
    print(f"\n{CELLS['connect']['title']} (getOrder): {connect['rps']:.0f} req/s, {connect['cpu_us']:.1f} µs CPU/req, "
          f"{connect['failed']} failed; "
          f"{per_round_ratio(results, ('order-server', 'connect'), ('order-server', 'web')):.2f}x the gRPC-Web cell "
          "(same rounds)")

    tls_result = results[tls_key]
    to_plain = per_round_ratio(results, tls_key, ("order-server", "native"))
    print(f"\n{CELLS['tls']['title']}: {tls_result['rps']:.0f} req/s, {tls_result['cpu_us']:.1f} µs CPU/req, "
          f"{tls_result['failed']} failed; {to_plain:.2f}x the plaintext cell (same rounds)")
    for title, with_token, twin in [
        ("a token, plaintext", ("token", "token"), ("order-server", "native")),
        ("a token, TLS", tls_key, ("TLS", "native")),
    ]:
        ratios = round_ratios(results, with_token, twin)
        low, high = median_interval(ratios)
        print(f"  {title}: {statistics.median(ratios):.3f}x its twin without authentication "
              f"(interval {low:.3f}-{high:.3f}; target >= 0.95x), "
              f"{results[with_token]['cpu_us'] - results[twin]['cpu_us']:+.2f} µs CPU per call, "
              f"{results[with_token]['failed']} failed")

    print("\nThe stores (order-server only; PostgreSQL on the server's CPU too):")
    header = f"{'cell':<52} {'req/s':>9} {'CPU µs/req':>11} {'failed':>7}"
    print(header)
    print("-" * len(header))
    rows = [
        ("getOrder on PostgreSQL, native, 16 conns x 16 streams", "postgres get"),
        ("addOrder on SQLite (default), durable writes", "sqlite add"),
        ("  tonic client (bench-adds), 64 in flight, no key", "sqlite add, no key"),
        ("  same, a key on every call", "sqlite add, keys"),
        ("  same client, one call at a time, no key", "sqlite add, one at a time"),
        ("addOrder on PostgreSQL, durable writes", "postgres add"),
        ("  tonic client (bench-adds), 64 in flight, no key", "postgres add, no key"),
        ("  same, a key on every call", "postgres add, keys"),
        ("  same client, one call at a time, no key", "postgres add, one at a time"),
    ]
    for title, key in rows:
        r = stores[key]
        print(f"{title:<52} {r['rps']:>9.0f} {r['cpu_us']:>11.1f} {r['failed']:>7}")
    for store in ("sqlite", "postgres"):
        plain, keyed = stores[f"{store} add, no key"], stores[f"{store} add, keys"]
        print(f"  addOrder on {store}: a key on every call = {keyed['rps'] / plain['rps']:.2f}x the calls "
              f"per second without ({keyed['cpu_us'] - plain['cpu_us']:+.1f} µs CPU per call); "
              f"failed or lost (an OK not in the database): {keyed['failed'] + plain['failed']}")
        target = {"sqlite": 20000, "postgres": 10000}[store]
        print(f"  addOrder on {store}, a key on every call, 64 in flight: {keyed['rps']:.0f}/s (target >= "
              f"{target} (#24): {'met' if keyed['rps'] >= target else 'NOT met'})")
        alone = stores[f"{store} add, one at a time"]
        print(f"  addOrder on {store}, one call at a time: {1e6 / alone['rps']:.0f} µs a call "
              f"(#24: no slower than before group commit and indexed search; see bench/RESULTS.md)")
    sqlite_get = results[("order-server", "native")]["rps"]
    print(f"  getOrder: PostgreSQL / SQLite (cached) = {stores['postgres get']['rps'] / sqlite_get:.2f}x")

    print("\nrequests/s of each round:")
    for (name, cell), r in results.items():
        print(f"  {name:<14} {cell:<7} {r['rounds']}")
    for key, r in stores.items():
        print(f"  {key:<22} {r['rounds']}")


if __name__ == "__main__":
    main()
