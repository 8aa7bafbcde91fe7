"""Clients written by others against the tutorial's proto, calling a live order-server.

- Python grpcio, with code generated from proto/order_management.proto at test time;
- `buf curl` over gRPC-Web, native gRPC and the Connect protocol, with no .proto file (server
  reflection);
- plain `curl` with JSON (the Connect protocol's unary calls).

Run by `make test` (python3 -m unittest, in the project's .venv).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import grpc
from grpc_status import rpc_status
from google.rpc import error_details_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
BUF = ROOT / "e2e" / "node_modules" / ".bin" / "buf"


def generate_python_stubs(out_dir):
    """protoc --python_out --grpc_python_out for the tutorial's proto, as a Python user would."""
    wellknown = Path(protoc.__file__).parent / "_proto"
    status = protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'proto'}",
            f"-I{wellknown}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            "order_management.proto",
        ]
    )
    if status != 0:
        raise RuntimeError("protoc failed")
    sys.path.insert(0, out_dir)


BINARY = os.environ.get("ORDER_SERVER_BIN", str(ROOT / "target" / "debug" / "order-server"))


class LiveServer:
    def __init__(self, *flags):
        self.flags = list(flags)

    def __enter__(self):
        # A database of its own, deleted with the server.
        self.data = tempfile.mkdtemp(prefix="order-interop-")
        database = f"sqlite:{self.data}/orders.db"
        self.process = subprocess.Popen(
            [BINARY, "--listen", "127.0.0.1:0", "--database", database, *self.flags],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"},
        )
        for line in self.process.stderr:
            match = re.search(r"address=(\S+)", line)
            if match:
                self.address = match.group(1)
                return self
        raise RuntimeError("order-server did not report its address")

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(timeout=20)
        shutil.rmtree(self.data, ignore_errors=True)


def setUpModule():
    global SERVER, STUBS, pb, pb_grpc, wrappers
    STUBS = stubs = tempfile.mkdtemp(prefix="order-stubs-")
    generate_python_stubs(stubs)
    import order_management_pb2 as pb  # noqa: E402
    import order_management_pb2_grpc as pb_grpc  # noqa: E402
    from google.protobuf import wrappers_pb2 as wrappers  # noqa: E402

    SERVER = LiveServer().__enter__()


def tearDownModule():
    SERVER.__exit__(None, None, None)
    shutil.rmtree(STUBS, ignore_errors=True)


class PythonGrpcio(unittest.TestCase):
    def setUp(self):
        self.channel = grpc.insecure_channel(SERVER.address)
        self.stub = pb_grpc.OrderManagementStub(self.channel)

    def tearDown(self):
        self.channel.close()

    def test_get_order_106(self):
        order = self.stub.getOrder(wrappers.StringValue(value="106"), timeout=5)
        self.assertEqual(order.id, "106")
        self.assertEqual(list(order.items), ["Amazon Echo", "Apple iPhone XS"])
        self.assertEqual(order.destination, "Mountain View, CA")
        self.assertEqual(order.price, 300.0)

    def test_add_order_assigns_an_id(self):
        new = pb.Order(items=["Python mug"], price=7.5, destination="Boston, MA")
        order_id = self.stub.addOrder(new, timeout=5).value
        self.assertTrue(order_id)
        stored = self.stub.getOrder(wrappers.StringValue(value=order_id), timeout=5)
        self.assertEqual(list(stored.items), ["Python mug"])

    def test_add_existing_id_is_already_exists(self):
        with self.assertRaises(grpc.RpcError) as raised:
            self.stub.addOrder(pb.Order(id="102", items=["x"], price=1, destination="y"), timeout=5)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.ALREADY_EXISTS)

    def test_invalid_add_carries_bad_request_details(self):
        bad = pb.Order(items=["ok", ""], price=-1, destination="")
        with self.assertRaises(grpc.RpcError) as raised:
            self.stub.addOrder(bad, timeout=5)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        status = rpc_status.from_call(raised.exception)
        self.assertIsNotNone(status, "grpc-status-details-bin is present")
        bad_requests = []
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                bad_requests.append(bad_request)
        self.assertEqual(len(bad_requests), 1)
        fields = [v.field for v in bad_requests[0].field_violations]
        self.assertEqual(fields, ["items[1]", "price", "destination"])

    def test_gzip_both_ways(self):
        # grpcio compresses its requests (the server inflates them) and always accepts gzip, so
        # large answers come back compressed.
        channel = grpc.insecure_channel(SERVER.address, compression=grpc.Compression.Gzip)
        stub = pb_grpc.OrderManagementStub(channel)
        items = [f"gzip item {i} " + "p" * 150 for i in range(30)]
        order_id = stub.addOrder(pb.Order(items=items, price=3, destination="Erie, PA"), timeout=5).value
        # (grpcio keeps grpc-encoding to itself: that the answer is compressed on the wire is
        # checked with raw HTTP/2 frames in server/tests/compression.rs.)
        order = stub.getOrder(wrappers.StringValue(value=order_id), timeout=5)
        self.assertEqual(list(order.items), items)
        channel.close()

    def test_search_streams_the_matches(self):
        found = [o.id for o in self.stub.searchOrders(wrappers.StringValue(value="Google"), timeout=5)]
        self.assertEqual(found, ["102", "104"])
        none = list(self.stub.searchOrders(wrappers.StringValue(value="Nokia"), timeout=5))
        self.assertEqual(none, [])

    def test_update_is_all_or_nothing(self):
        updates = [
            pb.Order(id="105", items=["Amazon Echo Dot"], price=35, destination="San Jose, CA"),
            pb.Order(id="nope", items=["x"], price=1, destination="y"),
        ]
        with self.assertRaises(grpc.RpcError) as raised:
            self.stub.updateOrders(iter(updates), timeout=5)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.NOT_FOUND)
        unchanged = self.stub.getOrder(wrappers.StringValue(value="105"), timeout=5)
        self.assertEqual(list(unchanged.items), ["Amazon Echo"])

        summary = self.stub.updateOrders(iter(updates[:1]), timeout=5).value
        self.assertIn("105", summary)
        changed = self.stub.getOrder(wrappers.StringValue(value="105"), timeout=5)
        self.assertEqual(list(changed.items), ["Amazon Echo Dot"])

    def test_add_many_is_all_or_nothing_and_names_each_bad_order(self):
        def rows():
            yield pb.Order(items=["Python kettle"], price=20, destination="Boston, MA")
            yield pb.Order(items=["Python teapot"], price=-1, destination="Boston, MA")
            yield pb.Order(items=[], price=3, destination="Boston, MA")
        with self.assertRaises(grpc.RpcError) as raised:
            self.stub.addOrders(rows(), timeout=5)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        status = rpc_status.from_call(raised.exception)
        bad_request = error_details_pb2.BadRequest()
        status.details[0].Unpack(bad_request)
        self.assertEqual([v.field for v in bad_request.field_violations], ["orders[1].price", "orders[2].items"])
        found = list(self.stub.searchOrders(wrappers.StringValue(value="Python kettle"), timeout=5))
        self.assertEqual(found, [])

        summary = self.stub.addOrders(iter(list(rows())[:1]), timeout=5).value
        self.assertRegex(summary, r"^added 1 order: \d+$")
        found = list(self.stub.searchOrders(wrappers.StringValue(value="Python kettle"), timeout=5))
        self.assertEqual(len(found), 1)

    def test_process_groups_by_destination(self):
        ids = (wrappers.StringValue(value=i) for i in ["102", "103", "104", "105", "106"])
        shipments = list(self.stub.processOrders(ids, timeout=5))
        groups = sorted(sorted(o.id for o in s.ordersList) for s in shipments)
        self.assertEqual(groups, [["102", "104", "106"], ["103", "105"]])
        for shipment in shipments:
            self.assertEqual(len({o.destination for o in shipment.ordersList}), 1)
            self.assertTrue(shipment.id)
            self.assertTrue(shipment.status)

    def test_process_unknown_id_is_not_found(self):
        ids = (wrappers.StringValue(value=i) for i in ["102", "ghost"])
        with self.assertRaises(grpc.RpcError) as raised:
            list(self.stub.processOrders(ids, timeout=5))
        self.assertEqual(raised.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertIn("ghost", raised.exception.details())

    def test_unknown_order_is_not_found(self):
        with self.assertRaises(grpc.RpcError) as raised:
            self.stub.getOrder(wrappers.StringValue(value="999"), timeout=5)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertIn("not found", raised.exception.details())


def buf_curl(*args):
    return subprocess.run(
        [str(BUF), "curl", *args], capture_output=True, text=True, timeout=30
    )


def metric(address, name, **labels):
    """The sum of the series `name` of /metrics whose labels include `labels`."""
    import urllib.request

    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        series_name, _, series_labels = series.partition("{")
        if series_name == name and all(f'{k}="{v}"' in series_labels for k, v in labels.items()):
            total += float(value)
    return total


def until(condition, what, limit=20.0):
    """Polls `condition` until it holds (only a hang reaches `limit`)."""
    import time

    end = time.monotonic() + limit
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


class WriteGuarantees(unittest.TestCase):
    """grpcio clients that cancel, time out and retry: a write is applied once or not at all."""

    def setUp(self):
        self.channel = grpc.insecure_channel(SERVER.address)
        self.stub = pb_grpc.OrderManagementStub(self.channel)

    def tearDown(self):
        self.channel.close()

    def held_open(self, orders, release):
        """A request stream that sends `orders`, then waits for `release` without ending."""
        for order in orders:
            yield order
        release.wait(30)

    def settled(self, method, codes):
        """Waits until `method` has ended a call with one of `codes` and no write runs."""
        until(
            lambda: sum(metric(SERVER.address, "grpc_server_handled_total", grpc_method=method, grpc_code=c) for c in codes) >= 1,
            f"{method} ends",
        )
        until(lambda: metric(SERVER.address, "order_server_writes_in_flight") == 0, "writes settle")

    def assert_missing(self, ids):
        for order_id in ids:
            with self.assertRaises(grpc.RpcError, msg=f"{order_id} was stored") as raised:
                self.stub.getOrder(wrappers.StringValue(value=order_id), timeout=5)
            self.assertEqual(raised.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_a_cancelled_import_stores_nothing(self):
        import threading

        ids = ["py-cancel-1", "py-cancel-2", "py-cancel-3"]
        release = threading.Event()
        before = metric(SERVER.address, "grpc_server_msg_received_total", grpc_method="addOrders")
        orders = [pb.Order(id=i, items=["x"], price=1, destination="Kandy") for i in ids]
        future = self.stub.addOrders.future(self.held_open(orders, release), timeout=30)
        until(
            lambda: metric(SERVER.address, "grpc_server_msg_received_total", grpc_method="addOrders") >= before + 3,
            "the three orders arrive",
        )
        handled = metric(SERVER.address, "grpc_server_handled_total", grpc_method="addOrders")
        future.cancel()  # RST_STREAM(CANCEL), the stream still open
        release.set()
        until(
            lambda: metric(SERVER.address, "grpc_server_handled_total", grpc_method="addOrders") > handled,
            "the cancelled call ends",
        )
        until(lambda: metric(SERVER.address, "order_server_writes_in_flight") == 0, "writes settle")
        self.assert_missing(ids)

    def test_a_deadline_mid_stream_stores_nothing(self):
        import threading

        ids = ["py-late-1", "py-late-2"]
        release = threading.Event()
        handled = metric(SERVER.address, "grpc_server_handled_total", grpc_method="updateOrders")
        orders = [pb.Order(id=i, items=["late"], price=1, destination="Kandy") for i in ["102", "103"]]
        with self.assertRaises(grpc.RpcError) as raised:
            self.stub.updateOrders(self.held_open(orders, release), timeout=0.5)
        release.set()
        self.assertEqual(raised.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        until(
            lambda: metric(SERVER.address, "grpc_server_handled_total", grpc_method="updateOrders") > handled,
            "the call ends",
        )
        until(lambda: metric(SERVER.address, "order_server_writes_in_flight") == 0, "writes settle")
        for order_id in ["102", "103"]:
            order = self.stub.getOrder(wrappers.StringValue(value=order_id), timeout=5)
            self.assertNotEqual(list(order.items), ["late"], f"{order_id} was updated")

    def test_ten_thousand_tiny_orders_stream_every_time(self):
        # One DATA frame per message, as grpcio sends them: h2's budget for small frames once
        # closed the connection (GOAWAY ENHANCE_YOUR_CALM) about one run in four.
        for run in range(6):
            channel = grpc.insecure_channel(SERVER.address)
            stub = pb_grpc.OrderManagementStub(channel)
            orders = (pb.Order(items=["x"], destination="D") for _ in range(10_000))
            answer = stub.addOrders(orders, timeout=60).value
            self.assertTrue(answer.startswith("added 10000 orders"), f"run {run}: {answer}")
            channel.close()
        channel = grpc.insecure_channel(SERVER.address)
        stub = pb_grpc.OrderManagementStub(channel)
        with self.assertRaises(grpc.RpcError) as raised:
            stub.addOrders((pb.Order(items=["x"], destination="D") for _ in range(10_001)), timeout=60)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("at most 10000", raised.exception.details())
        # The connection survived the refusal.
        order = stub.getOrder(wrappers.StringValue(value="106"), timeout=5)
        self.assertEqual(order.id, "106")
        channel.close()

    def test_ten_thousand_tiny_orders_from_grpc_go(self):
        # The tutorial's own client stack, grpc-go (Debian's), one DATA frame per message too.
        out = ROOT / "target" / "interop-go"
        subprocess.run([str(ROOT / "scripts" / "build-go.sh"), str(out), "tiny-orders",
                        str(ROOT / "interop" / "go"), str(ROOT / "proto" / "order_management.proto")],
                       check=True, capture_output=True, timeout=600)
        for run in range(3):
            done = subprocess.run([str(out / "tiny-orders"), SERVER.address, "10000"],
                                  capture_output=True, text=True, timeout=120)
            self.assertEqual(done.returncode, 0, f"run {run}: {done.stdout}{done.stderr}")
            self.assertTrue(done.stdout.startswith("added 10000 orders"), done.stdout)
        over = subprocess.run([str(out / "tiny-orders"), SERVER.address, "10001"],
                              capture_output=True, text=True, timeout=120)
        # The limit error, and the connection still answered getOrder afterwards.
        self.assertIn("error ResourceExhausted: too many messages in one call: at most 10000", over.stdout)
        self.assertNotIn("error after", over.stdout)

    def test_a_retry_with_the_same_key_is_answered_not_applied(self):
        import uuid

        key = (("idempotency-key", str(uuid.uuid4())),)
        new = pb.Order(items=["retried mug"], price=3, destination="Matara")
        first = self.stub.addOrder(new, metadata=key, timeout=5).value
        again = self.stub.addOrder(new, metadata=key, timeout=5).value
        self.assertEqual(first, again)
        with self.assertRaises(grpc.RpcError) as raised:
            other = pb.Order(items=["another mug"], price=3, destination="Matara")
            self.stub.addOrder(other, metadata=key, timeout=5)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)


class BufCurl(unittest.TestCase):
    def test_grpc_web_gets_106_without_the_proto(self):
        result = buf_curl(
            "--protocol", "grpcweb", "-d", '"106"', f"http://{SERVER.address}/OrderManagement/getOrder"
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        order = json.loads(result.stdout)
        self.assertEqual(order["id"], "106")
        self.assertIn("Apple iPhone XS", order["items"])

    def test_native_grpc_gets_106(self):
        result = buf_curl(
            "--protocol", "grpc", "--http2-prior-knowledge", "-d", '"106"',
            f"http://{SERVER.address}/OrderManagement/getOrder",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)["destination"], "Mountain View, CA")

    def test_reflection_lists_the_service(self):
        for reflect in ("grpc-v1", "grpc-v1alpha"):
            result = buf_curl(
                "--protocol", "grpc", "--http2-prior-knowledge", "--reflect-protocol", reflect,
                "--list-methods", f"http://{SERVER.address}",
            )
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("OrderManagement/getOrder", result.stdout.split())

    def test_grpc_web_streams_search_as_two_orders(self):
        result = buf_curl(
            "--protocol", "grpcweb", "-d", '"Google"', f"http://{SERVER.address}/OrderManagement/searchOrders"
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        # buf curl prints each streamed message as its own JSON document.
        decoder = json.JSONDecoder()
        text, orders = result.stdout.strip(), []
        while text:
            order, end = decoder.raw_decode(text)
            orders.append(order)
            text = text[end:].strip()
        self.assertEqual([o["id"] for o in orders], ["102", "104"])

    def test_connect_protocol_gets_106_and_streams_a_search(self):
        # Reflection over the Connect protocol too (a bidi stream: HTTP/2).
        for protocol_args in (["--protocol", "connect"], ["--protocol", "connect", "--http2-prior-knowledge"]):
            result = buf_curl(
                *protocol_args, "-d", '"106"', f"http://{SERVER.address}/OrderManagement/getOrder"
            ) if "--http2-prior-knowledge" in protocol_args else buf_curl(
                *protocol_args, "--schema", str(ROOT / "proto" / "order_management.proto"),
                "-d", '"106"', f"http://{SERVER.address}/OrderManagement/getOrder",
            )
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(json.loads(result.stdout)["id"], "106")
        result = buf_curl(
            "--protocol", "connect", "--http2-prior-knowledge", "-d", '"echo"',
            f"http://{SERVER.address}/OrderManagement/searchOrders",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.count('"id"'), 2, result.stdout)
        result = buf_curl(
            "--protocol", "connect", "--http2-prior-knowledge", "-d", '"999"',
            f"http://{SERVER.address}/OrderManagement/getOrder",
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(json.loads(result.stdout or result.stderr)["code"], "not_found")

    def test_plain_curl_with_json(self):
        def curl(path, body, *extra):
            result = subprocess.run(
                ["curl", "-sS", "-w", "\n%{http_code}", "-H", "content-type: application/json", *extra,
                 "-d", body, f"http://{SERVER.address}/OrderManagement/{path}"],
                capture_output=True, text=True, timeout=30,
            )
            self.assertEqual(result.returncode, 0, result.stderr)
            text, status = result.stdout.rsplit("\n", 1)
            return int(status), json.loads(text)

        status, order = curl("getOrder", '"106"')
        self.assertEqual((status, order["id"]), (200, "106"))
        status, new_id = curl("addOrder", '{"items": ["curl mug"], "price": 4.5, "destination": "Tulsa, OK"}')
        self.assertEqual(status, 200)
        status, order = curl("getOrder", json.dumps(new_id), "--compressed")
        self.assertEqual(order["items"], ["curl mug"])
        status, error = curl("addOrder", '{"items": [], "price": 1, "destination": "x"}')
        self.assertEqual(status, 400)
        self.assertEqual(error["code"], "invalid_argument")
        self.assertEqual(error["details"][0]["type"], "google.rpc.BadRequest")
        self.assertEqual(error["details"][0]["debug"]["fieldViolations"][0]["field"], "items")

    def test_not_found_over_grpc_web(self):
        result = buf_curl(
            "--protocol", "grpcweb", "-d", '"999"', f"http://{SERVER.address}/OrderManagement/getOrder"
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(json.loads(result.stdout or result.stderr)["code"], "not_found")


if __name__ == "__main__":
    unittest.main()


class TokensFromPyJWT(unittest.TestCase):
    """Tokens signed by PyJWT, not by the server's own library: the claims the flags name are
    required, `iss` is one string, and expiry has a 5 s leeway."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="order-interop-jwt-")
        cls.secret = "pyjwt interop secret"
        Path(f"{cls.dir}/secret").write_text(cls.secret + "\n")
        cls.server = LiveServer("--auth-secret-file", f"{cls.dir}/secret",
                                "--auth-issuer", "https://issuer.test",
                                "--auth-audience", "orders").__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.server.__exit__(None, None, None)
        shutil.rmtree(cls.dir, ignore_errors=True)

    def call(self, claims):
        import time
        import jwt

        now = int(time.time())
        full = {"sub": "pyjwt", "scope": "orders:read", "exp": now + 600,
                "iss": "https://issuer.test", "aud": "orders", **claims}
        full = {key: value for key, value in full.items() if value is not None}
        token = jwt.encode(full, self.secret, algorithm="HS256")
        channel = grpc.insecure_channel(self.server.address)
        self.addCleanup(channel.close)
        stub = pb_grpc.OrderManagementStub(channel)
        return stub.getOrder(wrappers.StringValue(value="106"),
                             metadata=(("authorization", f"Bearer {token}"),), timeout=5)

    def refused(self, claims, why):
        with self.assertRaises(grpc.RpcError) as raised:
            self.call(claims)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        self.assertIn(why, raised.exception.details())

    def test_a_good_token_passes(self):
        self.assertEqual(self.call({}).id, "106")

    def test_a_token_without_the_configured_claims_is_refused(self):
        self.refused({"aud": None}, "no aud claim")
        self.refused({"iss": None}, "no iss claim")
        self.refused({"exp": None}, "no exp claim")

    def test_an_issuer_array_is_refused_even_naming_the_right_one(self):
        self.refused({"iss": ["https://evil.test", "https://issuer.test"]}, "one string")

    def test_a_token_expired_30_s_ago_is_refused(self):
        import time

        self.refused({"exp": int(time.time()) - 30}, "expired")


class OverTlsWithTokens(unittest.TestCase):
    """A server that speaks TLS only and checks tokens, called by grpcio and buf curl."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="order-interop-tls-")
        cls.cert = f"{cls.dir}/cert.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
             "-keyout", f"{cls.dir}/key.pem", "-out", cls.cert],
            check=True, capture_output=True,
        )
        secret = f"{cls.dir}/secret"
        Path(secret).write_text("interop secret\n")
        token = lambda scope: subprocess.run(
            [BINARY, "token", "--secret-file", secret, "--scope", scope, "--subject", "interop"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        cls.read_token, cls.write_token = token("orders:read"), token("orders:write")
        cls.server = LiveServer("--tls-cert", cls.cert, "--tls-key", f"{cls.dir}/key.pem",
                                "--auth-secret-file", secret).__enter__()
        cls.target = f"localhost:{cls.server.address.rsplit(':', 1)[1]}"

    @classmethod
    def tearDownClass(cls):
        cls.server.__exit__(None, None, None)
        shutil.rmtree(cls.dir, ignore_errors=True)

    def stub(self):
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(self.cert).read_bytes())
        channel = grpc.secure_channel(self.target, credentials)
        self.addCleanup(channel.close)
        return pb_grpc.OrderManagementStub(channel)

    def test_grpcio_with_a_token_gets_106(self):
        order = self.stub().getOrder(
            wrappers.StringValue(value="106"), timeout=5,
            metadata=[("authorization", f"Bearer {self.read_token}")],
        )
        self.assertEqual(order.destination, "Mountain View, CA")

    def test_grpcio_without_a_token_is_unauthenticated(self):
        with self.assertRaises(grpc.RpcError) as raised:
            self.stub().getOrder(wrappers.StringValue(value="106"), timeout=5)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        self.assertIn("no token", raised.exception.details())

    def test_grpcio_read_token_cannot_add(self):
        with self.assertRaises(grpc.RpcError) as raised:
            self.stub().addOrder(
                pb.Order(items=["x"], price=1, destination="y"), timeout=5,
                metadata=[("authorization", f"Bearer {self.read_token}")],
            )
        self.assertEqual(raised.exception.code(), grpc.StatusCode.PERMISSION_DENIED)

    def test_buf_curl_over_tls_native_and_grpc_web(self):
        for protocol in ["grpc", "grpcweb"]:
            result = buf_curl(
                "--protocol", protocol, "--cacert", self.cert,
                "-H", f"Authorization: Bearer {self.write_token}",
                "-d", '"106"', f"https://{self.target}/OrderManagement/getOrder",
            )
            self.assertEqual(result.returncode, 0, f"{protocol}: {result.stderr}")
            self.assertEqual(json.loads(result.stdout)["id"], "106")

    def test_reflection_needs_no_token(self):
        result = buf_curl("--protocol", "grpc", "--cacert", self.cert, "--list-methods", f"https://{self.target}")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("OrderManagement/getOrder", result.stdout)
