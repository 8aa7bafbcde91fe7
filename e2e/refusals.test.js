// Refusals read as refusals by a client that sends its body after its head: Node's own http and
// http2 modules (what Connect-ES runs on in Node), against order-server with authentication on.
// The server reads a refused call's body before it answers; answered first, Node got
// `write EPIPE` over HTTP/1.1 and a reset stream over HTTP/2 instead of UNAUTHENTICATED.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import http2 from "node:http2";
import os from "node:os";
import path from "node:path";
import { setTimeout as pause } from "node:timers/promises";
import { startServer, selfSignedTls } from "./harness.js";

const dir = mkdtempSync(path.join(os.tmpdir(), "order-e2e-refusals-"));
// getOrder("106") as one gRPC frame, sent in two packets.
const FRAME = Buffer.from([0, 0, 0, 0, 5, 0x0a, 3, 0x31, 0x30, 0x36]);
// How long the slow link the clients stand for takes between packets.
const SLOW_NETWORK_MS = 100;
let plain;
let tls;

before(async () => {
  writeFileSync(path.join(dir, "secret"), "refusal test secret\n");
  const auth = ["--auth-secret-file", path.join(dir, "secret")];
  plain = await startServer(auth);
  tls = await startServer([...selfSignedTls(dir), ...auth], { scheme: "https" });
});

after(async () => {
  await plain?.stop();
  await tls?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/**
 * Resolves once both `answered` and `sent` have, to what `answered` gave; rejects with the first
 * error of either. A call is read only if its whole body went out too: Connect-ES fails a call
 * whose request body could not be written, whatever came back.
 */
async function both(answered, sent) {
  const [status] = await Promise.all([answered, sent]);
  return status;
}

/**
 * Writes `FRAME` to `body` in two packets, as a slow link would; resolves once all is written,
 * rejects if the request is closed or fails first.
 */
function slowly(body) {
  return new Promise((resolve, reject) => {
    let written = false;
    body.on("error", reject);
    body.on("close", () => written || reject(new Error("closed before its body was written")));
    (async () => {
      await pause(SLOW_NETWORK_MS);
      body.write(FRAME.subarray(0, 5));
      await pause(SLOW_NETWORK_MS);
      body.end(FRAME.subarray(5), () => {
        written = true;
        resolve();
      });
    })();
  });
}

/** One gRPC-Web call over HTTP/1.1 without a token, its body after its head: its grpc-status. */
function overHttp1(url) {
  const request = http.request(`${url}/OrderManagement/getOrder`, {
    method: "POST",
    agent: false,
    headers: { "content-type": "application/grpc-web+proto", "content-length": FRAME.length },
  });
  const answered = new Promise((resolve, reject) => {
    request.on("response", (response) => {
      response.resume();
      response.on("end", () => resolve(response.headers["grpc-status"]));
      response.on("error", reject);
    });
    request.on("error", reject);
  });
  request.flushHeaders();
  return both(answered, slowly(request));
}

/** The same natively over HTTP/2 (TLS) on `session`: its grpc-status, from headers or trailers. */
function overHttp2(session) {
  const stream = session.request({
    ":method": "POST", ":path": "/OrderManagement/getOrder",
    "content-type": "application/grpc", te: "trailers",
  });
  const answered = new Promise((resolve, reject) => {
    let status;
    stream.on("response", (headers) => (status = headers["grpc-status"]));
    stream.on("trailers", (trailers) => (status ??= trailers["grpc-status"]));
    stream.on("error", reject);
    stream.on("end", () => resolve(status));
    stream.resume();
  });
  return both(answered, slowly(stream));
}

test("Node's http reads 50 refusals over HTTP/1.1, each body sent after its head", async () => {
  const answers = await Promise.allSettled(Array.from({ length: 50 }, () => overHttp1(plain.url)));
  const read = answers.map((a) => (a.status === "fulfilled" ? a.value : `failed: ${a.reason.message}`));
  assert.deepEqual(read, Array(50).fill("16"));
});

test("Node's http2 reads 50 refusals over HTTP/2 with TLS, each body sent after its head", async () => {
  const session = http2.connect(tls.url, { rejectUnauthorized: false });
  try {
    const answers = await Promise.allSettled(Array.from({ length: 50 }, () => overHttp2(session)));
    const read = answers.map((a) => (a.status === "fulfilled" ? a.value : `failed: ${a.reason.message}`));
    assert.deepEqual(read, Array(50).fill("16"));
  } finally {
    session.close();
  }
});
