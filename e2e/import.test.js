// End-to-end client streaming from the page, in headless Chromium over TLS (HTTP/2, where a browser
// can stream a request body): the server counts an upload's first orders while the page still
// produces the rest; a 50 MB file imports with the tab's memory flat; bad lines are each named and
// nothing is stored; IDs are processed into shipments as they stream back.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, createWriteStream, statSync } from "node:fs";
import { once } from "node:events";
import https from "node:https";
import os from "node:os";
import path from "node:path";
import { startServer, launchBrowser, selfSignedTls } from "./harness.js";

const dir = mkdtempSync(path.join(os.tmpdir(), "order-e2e-import-"));
let server;
let browser;
let context;

before(async () => {
  server = await startServer(selfSignedTls(dir), { scheme: "https" });
  browser = await launchBrowser(["--ignore-certificate-errors"]);
  context = await browser.newContext({ ignoreHTTPSErrors: true });
});

after(async () => {
  await context?.close();
  await browser?.close();
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

// The server's /metrics, trusting the test's certificate.
function metrics() {
  const ca = readFileSync(path.join(dir, "cert.pem"));
  return new Promise((resolve, reject) => {
    https.get(`${server.url}/metrics`, { ca }, (response) => {
      let body = "";
      response.on("data", (chunk) => (body += chunk));
      response.on("end", () => resolve(body));
    }).on("error", reject);
  });
}

// The value of a series of addOrders, by name and extra label ("" for none).
function addOrdersSeries(text, name, label = "") {
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && l.includes('grpc_method="addOrders"')
    && l.includes(label));
  return line ? Number(line.split(" ").pop()) : 0;
}

async function openPage() {
  const page = await context.newPage();
  await page.goto(`${server.url}/`);
  await page.waitForSelector("#import:not([disabled])");
  return page;
}

test("in a browser that cannot stream uploads, the page over https:// names the browser, not the protocol", async () => {
  const page = await context.newPage();
  // As Firefox does: a ReadableStream request body is taken for its text.
  await page.addInitScript(() => {
    const Native = window.Request;
    window.Request = function Request(input, init) {
      if (init?.body instanceof ReadableStream) init = { method: init.method, body: String(init.body) };
      return new Native(input, init);
    };
    window.Request.prototype = Native.prototype;
  });
  await page.goto(`${server.url}/`);
  await page.waitForFunction(() => document.getElementById("import-mode").textContent !== "");
  const mode = await page.locator("#import-mode").innerText();
  assert.match(mode, /up to 4 MiB: this browser cannot stream an upload \(Chromium-based browsers can\)/);
  assert.doesNotMatch(mode, /--tls-cert|https:\/\//);
  await page.close();
});

test("an upload streams: the server has counted the first orders while the page still produces the rest", async () => {
  const page = await openPage();
  assert.match(await page.locator("#import-mode").innerText(), /streams the file/);
  await page.evaluate(() => {
    let release;
    const gate = new Promise((resolve) => (release = resolve));
    window.releaseUpload = release;
    window.produced = 0;
    window.upload = (async () => {
      const wasm = await import("/pkg/order_web_client.js");
      await wasm.default();
      const client = new wasm.OrderClient();
      async function* orders() {
        for (let i = 0; i < 25; i++) {
          if (i === 20) await gate;
          window.produced++;
          yield { items: [`gated ${i}`], price: 1, destination: "Reno, NV" };
        }
      }
      return client.addOrders(orders());
    })();
  });
  // The page holds back its 21st order until the server has counted the first 20.
  const deadline = Date.now() + 15_000;
  let received = 0;
  while (received < 20) {
    assert.ok(Date.now() < deadline, `the server saw ${received} of the first 20 orders before the upload ended`);
    received = addOrdersSeries(await metrics(), "grpc_server_msg_received_total");
  }
  assert.equal(received, 20);
  assert.equal(await page.evaluate(() => window.produced), 20, "the page has not produced the rest yet");
  assert.equal(addOrdersSeries(await metrics(), "grpc_server_handled_total"), 0, "the call is still open");

  await page.evaluate(() => window.releaseUpload());
  const summary = await page.evaluate(() => window.upload);
  assert.match(summary, /^added 25 orders: /);
  await page.close();
});

test("a 50 MB file imports through the page by streaming, with the tab's memory flat", { timeout: 240_000 }, async () => {
  // 10 000 orders of about 5 KB, one JSON object per line.
  const file = path.join(dir, "orders.jsonl");
  const out = createWriteStream(file);
  const items = Array.from({ length: 20 }, (_, i) => `bulk item ${i} `.padEnd(200, "x"));
  for (let n = 0; n < 10_000; n++) {
    const line = JSON.stringify({ items, description: `bulk order ${n} `.padEnd(1000, "d"), price: 1.5,
      destination: "Reno, NV" });
    if (!out.write(line + "\n")) await once(out, "drain");
  }
  out.end();
  await once(out, "finish");
  const bytes = statSync(file).size;
  assert.ok(bytes > 50_000_000, `${bytes} bytes`);

  const page = await openPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send("Performance.enable");
  const heap = async () => (await cdp.send("Performance.getMetrics")).metrics
    .find((m) => m.name === "JSHeapUsedSize").value;
  const wasmMemory = () => page.evaluate(async () => {
    const wasm = await import("/pkg/order_web_client.js");
    return (await wasm.default()).memory.buffer.byteLength;
  });
  await cdp.send("HeapProfiler.collectGarbage");
  const baseline = await heap();
  const wasmBefore = await wasmMemory();
  const handledBefore = addOrdersSeries(await metrics(), "grpc_server_handled_total", 'grpc_code="OK"');
  const receivedBefore = addOrdersSeries(await metrics(), "grpc_server_msg_received_total");
  const receivedMidway = [];

  await page.setInputFiles("#import-file", file);
  const started = Date.now();
  await page.click("#import");
  // The heap's peak, and its live part: what is left after a garbage collection, sampled while the
  // upload runs. Uncollected garbage of rows already sent makes up the difference.
  let peak = baseline;
  let live = baseline;
  let progressSeen = 0;
  let sampling = false;
  const sampler = setInterval(async () => {
    if (sampling) return;
    sampling = true;
    try {
      peak = Math.max(peak, await heap());
      await cdp.send("HeapProfiler.collectGarbage");
      live = Math.max(live, await heap());
      const progress = await page.locator("#import-progress").innerText();
      const sent = Number(/Sent ([\d,]+)/.exec(progress)?.[1].replace(/,/g, "") ?? 0);
      progressSeen = Math.max(progressSeen, sent);
      // What the server has received while the page is still importing.
      const received = addOrdersSeries(await metrics(), "grpc_server_msg_received_total") - receivedBefore;
      if (await page.isHidden("#import-status") && received > 0 && received < 10_000) receivedMidway.push(received);
    } catch {
      // The page may be busy; the next sample counts.
    } finally {
      sampling = false;
    }
  }, 250);
  try {
    await page.waitForSelector("#import-status:not([hidden])", { timeout: 200_000 });
  } finally {
    clearInterval(sampler);
  }
  const seconds = (Date.now() - started) / 1000;
  const status = await page.locator("#import-status").innerText();
  assert.match(status, /Imported orders\.jsonl in [\d.]+ s: added 10000 orders: /, status);
  assert.ok(progressSeen > 0 && progressSeen <= 10_000, `progress showed ${progressSeen} orders sent`);
  // Streamed: the server had orders of the file while the page was still sending the rest.
  assert.ok(receivedMidway.length > 0, "the server received nothing before the upload ended");
  peak = Math.max(peak, await heap());
  const wasmAfter = await wasmMemory();
  const mb = (n) => (n / 1e6).toFixed(1);
  console.log(`# 50 MB import: ${mb(bytes)} MB in ${seconds.toFixed(1)} s; JS heap ${mb(baseline)} MB before, ` +
    `at most ${mb(live)} MB live and ${mb(peak)} MB with garbage during the import; wasm memory ` +
    `${mb(wasmBefore)} MB before, ${mb(wasmAfter)} MB after; the server had received ` +
    `${receivedMidway.join(", ")} orders at the samples taken while the page was still importing`);
  // Flat: the tab never holds the file, or anything near it (holding it would take more than the
  // file's size in strings alone).
  assert.ok(live - baseline < 8e6, `the live JS heap grew ${mb(live - baseline)} MB for a ${mb(bytes)} MB file`);
  assert.ok(peak - baseline < bytes / 2, `the JS heap grew ${mb(peak - baseline)} MB for a ${mb(bytes)} MB file`);
  assert.ok(wasmAfter - wasmBefore < 8e6, `wasm memory grew ${mb(wasmAfter - wasmBefore)} MB`);
  assert.equal(addOrdersSeries(await metrics(), "grpc_server_handled_total", 'grpc_code="OK"'), handledBefore + 1);

  // The first assigned order is stored whole.
  const first = /added 10000 orders: (\d+)/.exec(status)[1];
  await page.getByLabel("Order ID", { exact: true }).fill(first);
  await page.click("#lookup");
  await page.locator("#result").waitFor({ state: "visible" });
  assert.match(await page.locator("#result").innerText(), /bulk item 19/);
  await page.close();
});

test("an upload's large orders go gzipped on the wire, as Chromium's own net log counts them", async () => {
  // 500 orders of about 5 KB, each a message over the web client's 1 KiB threshold.
  const items = Array.from({ length: 20 }, (_, i) => `gzip item ${i} for the wire `.padEnd(200, "z"));
  const lines = Array.from({ length: 500 }, (_, n) => JSON.stringify({ items,
    description: `order ${n} `.repeat(100), price: 2.5, destination: "Omaha, NE" }));
  const file = path.join(dir, "large.jsonl");
  writeFileSync(file, lines.join("\n") + "\n");
  // A browser of its own, writing every HTTP/2 frame it sends to a net log.
  const log = path.join(dir, "net-log.json");
  const logged = await launchBrowser(["--ignore-certificate-errors", `--log-net-log=${log}`]);
  let status;
  let first;
  try {
    const page = await (await logged.newContext({ ignoreHTTPSErrors: true })).newPage();
    await page.goto(`${server.url}/`);
    await page.waitForSelector("#import:not([disabled])");
    await page.setInputFiles("#import-file", file);
    await page.click("#import");
    await page.waitForSelector("#import-status:not([hidden])", { timeout: 60_000 });
    status = await page.locator("#import-status").innerText();
    assert.match(status, /Imported large\.jsonl in [\d.]+ s: added 500 orders: /, status);
    // The server inflated each order whole.
    first = /added 500 orders: (\d+)/.exec(status)[1];
    await page.getByLabel("Order ID", { exact: true }).fill(first);
    await page.click("#lookup");
    await page.locator("#result").waitFor({ state: "visible" });
    assert.match(await page.locator("#result").innerText(), /gzip item 19 for the wire z+/);
  } finally {
    await logged.close();
  }
  // The addOrders stream's request headers and the DATA bytes sent on it.
  const net = JSON.parse(readFileSync(log, "utf8"));
  const type = (name) => net.constants.logEventTypes[name];
  const upload = net.events.find((e) => e.type === type("HTTP2_SESSION_SEND_HEADERS")
    && e.params.headers.includes(":path: /OrderManagement/addOrders"));
  assert.ok(upload, "the net log has no addOrders stream");
  assert.ok(upload.params.headers.includes("grpc-encoding: gzip"), upload.params.headers.join("\n"));
  const sent = net.events.filter((e) => e.type === type("HTTP2_SESSION_SEND_DATA")
    && e.params.stream_id === upload.params.stream_id && e.source.id === upload.source.id)
    .reduce((sum, e) => sum + e.params.size, 0);
  const bytes = statSync(file).size;
  console.log(`# an upload of ${(bytes / 1e6).toFixed(2)} MB of orders: ${(sent / 1024).toFixed(0)} KB on the wire`);
  assert.ok(sent > 0 && sent * 4 < bytes, `${sent} bytes on the wire for a ${bytes}-byte file`);
});

test("a file with bad lines imports nothing and names each bad line; a good one imports", async () => {
  const bad = path.join(dir, "bad.csv");
  writeFileSync(bad, [
    "id,items,price,destination",
    ',Kindle;Case,99,"Austin, TX"',
    ",Echo,-5,Boise",
    "",
    ",,3,Reno",
  ].join("\n"));
  const page = await openPage();
  await page.setInputFiles("#import-file", bad);
  await page.click("#import");
  await page.waitForSelector("#import-status:not([hidden])");
  assert.match(await page.locator("#import-status").innerText(), /Nothing was imported: orders are invalid/);
  const errors = await page.locator("#import-errors li").allInnerTexts();
  assert.deepEqual(errors, ["Line 3: price must not be negative.", "Line 5: items an order needs at least one item."]);
  // Nothing of the file was stored.
  await page.fill("#search-text", "Kindle");
  await page.click("#search");
  await page.waitForSelector("#search-status:not(:empty)");
  await page.waitForFunction(() => !/Searching/.test(document.getElementById("search-status").textContent));
  assert.match(await page.locator("#search-status").innerText(), /No order has an item containing “Kindle”/);

  const good = path.join(dir, "good.csv");
  writeFileSync(good, "items,description,price,destination\nKindle;Case,\"A reader, and its case\",99,\"Austin, TX\"\n");
  await page.setInputFiles("#import-file", good);
  await page.click("#import");
  await page.waitForFunction(() => /Imported/.test(document.getElementById("import-status").textContent));
  assert.match(await page.locator("#import-status").innerText(), /Imported good\.csv in [\d.]+ s: added 1 order: \d+/);
  await page.close();
});

test("Process turns order IDs into shipments, shown as they stream back", async () => {
  const page = await openPage();
  await page.fill("#process-ids", "102, 103 104");
  await page.click("#process");
  await page.waitForFunction(() => /shipment/.test(document.getElementById("process-status").textContent)
    && !/Processing/.test(document.getElementById("process-status").textContent));
  const status = await page.locator("#process-status").innerText();
  assert.match(status, /^3 orders in \d+ shipments?\.$/, status);
  const shipments = await page.locator("#shipments li").allInnerTexts();
  assert.ok(shipments.length >= 2, shipments.join("\n"));
  const listed = shipments.join("\n");
  for (const id of ["102", "103", "104"]) assert.match(listed, new RegExp(`\\b${id}\\b`));
  assert.match(listed, /Mountain View, CA/);
  await page.close();
});
