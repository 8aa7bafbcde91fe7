// Clients nobody here wrote: Connect-ES 2 in Node against the one port. The Connect protocol in JSON
// and binary, over HTTP/1.1 and HTTP/2, every RPC its transport can carry, errors read with
// findDetails(BadRequest); its gRPC and gRPC-Web transports with gzip both ways.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import diagnostics from "node:diagnostics_channel";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import {
  compressionGzip,
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import { startServer } from "./harness.js";

const here = path.dirname(fileURLToPath(import.meta.url));
let server;
let OrderManagement;
let BadRequestSchema;

before(async () => {
  // The contract's JavaScript, by protoc-gen-es from node_modules (buf.gen.yaml).
  const buf = path.join(here, "node_modules/.bin/buf");
  execFileSync(buf, ["generate", "../proto", "--template", "buf.gen.yaml"], { cwd: here });
  execFileSync(buf, ["generate", "proto", "--template", "buf.gen.yaml"], { cwd: here });
  ({ OrderManagement } = await import("./gen/order_management_pb.js"));
  ({ BadRequestSchema } = await import("./gen/google/rpc/error_details_pb.js"));
  server = await startServer();
});

after(async () => {
  await server?.stop();
});

const order = (id, item, destination = "Austin, TX") => ({ id, items: [item], description: "", price: 9.5, destination });

async function collect(iterable) {
  const all = [];
  for await (const item of iterable) all.push(item);
  return all;
}

async function* each(...items) {
  yield* items;
}

for (const httpVersion of ["1.1", "2"]) {
  for (const useBinaryFormat of [false, true]) {
    const name = `Connect ${useBinaryFormat ? "binary" : "JSON"} over HTTP/${httpVersion}`;
    test(`${name}: every RPC the transport can carry, and errors with their details`, async () => {
      const transport = createConnectTransport({ baseUrl: server.url, httpVersion, useBinaryFormat });
      const client = createClient(OrderManagement, transport);
      const tag = `${httpVersion}-${useBinaryFormat ? "b" : "j"}`;

      const found = await client.getOrder({ value: "106" });
      assert.equal(found.id, "106");
      assert.deepEqual(found.items, ["Amazon Echo", "Apple iPhone XS"]);

      const { value: id } = await client.addOrder(order(`C-${tag}`, `connect ${tag}`));
      assert.equal(id, `C-${tag}`);
      const matches = await collect(client.searchOrders({ value: `connect ${tag}` }));
      assert.deepEqual(matches.map((o) => o.id), [`C-${tag}`]);

      const missing = await client.getOrder({ value: "999999" }).catch((error) => error);
      assert.ok(missing instanceof ConnectError, String(missing));
      assert.equal(missing.code, Code.NotFound);

      const invalid = await client.addOrder({ items: [], price: -1, destination: "" }).catch((e) => e);
      assert.equal(invalid.code, Code.InvalidArgument);
      const [badRequest] = invalid.findDetails(BadRequestSchema);
      assert.deepEqual(badRequest.fieldViolations.map((v) => v.field), ["items", "price", "destination"]);

      if (httpVersion === "2") {
        // Client and bidirectional streams need HTTP/2.
        const added = await client.addOrders(each(order(`CS1-${tag}`, "stream a"), order(`CS2-${tag}`, "stream b")));
        assert.match(added.value, /added 2 orders/);
        const updated = await client.updateOrders(each({ ...order(`CS1-${tag}`, "stream a"), price: 1 }));
        assert.match(updated.value, /updated 1 order/);
        const refused = await client.addOrders(each(order("", "ok"), { items: [], price: 1, destination: "x" })).catch((e) => e);
        assert.equal(refused.code, Code.InvalidArgument);
        assert.equal(refused.findDetails(BadRequestSchema)[0].fieldViolations[0].field, "orders[1].items");
        const shipments = await collect(client.processOrders(each({ value: "102" }, { value: "103" }, { value: "104" })));
        assert.deepEqual(shipments.flatMap((s) => s.ordersList.map((o) => o.id)).sort(), ["102", "103", "104"]);
      }
    });
  }
}

/** Records what Node's own HTTP/1.1 client sends and gets (its diagnostics channel): each
 * request's method, and its answer's Content-Encoding. */
function watchedHttpClient() {
  const seen = [];
  const watch = ({ request, response }) => seen.push([request.method, response.headers["content-encoding"] ?? null]);
  diagnostics.subscribe("http.client.response.finish", watch);
  return { seen, stop: () => diagnostics.unsubscribe("http.client.response.finish", watch) };
}

test("Connect GET for getOrder (marked NO_SIDE_EFFECTS)", async () => {
  const { seen, stop } = watchedHttpClient();
  const transport = createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", useHttpGet: true });
  const client = createClient(OrderManagement, transport);
  assert.equal((await client.getOrder({ value: "105" })).id, "105");
  await client.addOrder(order("C-GET", "get"));
  stop();
  assert.deepEqual(seen.map(([method]) => method), ["GET", "POST"], "reads by GET, writes by POST");
});

test("Connect with gzip both ways: large bodies compressed, small ones not", async () => {
  const { seen, stop } = watchedHttpClient();
  const transport = createConnectTransport({
    baseUrl: server.url,
    httpVersion: "1.1",
    sendCompression: compressionGzip,
    acceptCompression: [compressionGzip],
    compressMinBytes: 1,
  });
  const client = createClient(OrderManagement, transport);
  assert.equal((await client.getOrder({ value: "105" })).id, "105");
  const big = { ...order("C-GZ", "gzip"), items: Array.from({ length: 40 }, (_, i) => `gzip item ${i} ${"g".repeat(100)}`) };
  assert.equal((await client.addOrder(big)).value, "C-GZ");
  const back = await client.getOrder({ value: "C-GZ" });
  assert.equal(back.items[39], big.items[39]);
  stop();
  assert.deepEqual(seen.map(([, encoding]) => encoding), [null, null, "gzip"], "only the large answer came gzipped");
});

for (const [name, make] of [
  ["gRPC", createGrpcTransport],
  ["gRPC-Web", createGrpcWebTransport],
]) {
  test(`Connect-ES's ${name} transport with gzip both ways`, async () => {
    const transport = make({
      baseUrl: server.url,
      httpVersion: name === "gRPC" ? "2" : "1.1",
      sendCompression: compressionGzip,
      acceptCompression: [compressionGzip],
      compressMinBytes: 1,
    });
    const client = createClient(OrderManagement, transport);
    const tag = name.replace(/\W/g, "");
    const big = { ...order(`G-${tag}`, "g"), items: Array.from({ length: 40 }, (_, i) => `item ${i} ${"q".repeat(100)}`) };
    assert.equal((await client.addOrder(big)).value, `G-${tag}`);
    let encoding;
    const back = await client.getOrder({ value: `G-${tag}` }, { onHeader: (headers) => (encoding = headers.get("grpc-encoding")) });
    assert.equal(back.items[39], big.items[39]);
    assert.equal(encoding, "gzip");
    const invalid = await client.addOrder({ items: [], price: 1, destination: "x" }).catch((e) => e);
    assert.equal(invalid.findDetails(BadRequestSchema)[0].fieldViolations[0].field, "items");
  });
}
