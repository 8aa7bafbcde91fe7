// What the page costs on the wire, as Chromium counts it: the first visit (everything compressed)
// and a repeat visit (everything revalidated, nothing sent again).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser, wireCounter } from "./harness.js";

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test("the first visit transfers under 140 KB, a repeat visit under 10 KB", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const wire = await wireCounter(page);
  await page.goto(`${server.url}/?id=106`);
  await page.locator("#result").waitFor({ state: "visible" });
  const first = wire.total();
  assert.ok(first < 140 * 1024, `first visit: ${first} bytes ${JSON.stringify(wire.byPath())}`);

  wire.reset();
  await page.goto(`${server.url}/?id=105`);
  await page.locator("#result").waitFor({ state: "visible" });
  const again = wire.total();
  assert.ok(again < 10 * 1024, `repeat visit: ${again} bytes ${JSON.stringify(wire.byPath())}`);
  console.log(`the page on the wire: first visit ${(first / 1024).toFixed(1)} KB, repeat visit ${(again / 1024).toFixed(1)} KB`);
  await context.close();
});

test("a search of 10 000 orders arrives gzipped", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${server.url}/`);
  await page.waitForSelector("#import:not([disabled])");
  const lines = ["items,price,destination"];
  for (let i = 0; i < 10_000; i++) lines.push(`wire item ${i};spare part,${i % 50},Dayton OH`);
  await page.setInputFiles("#import-file", { name: "wire.csv", mimeType: "text/csv", buffer: Buffer.from(lines.join("\n")) });
  await page.click("#import");
  await page.waitForFunction(() => /^Imported/.test(document.querySelector("#import-status").textContent), null, { timeout: 120_000 });

  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  // Bytes of the search's answer as they arrive: inflated (dataLength) and on the wire
  // (encodedDataLength). The web client aborts the fetch once it has read the trailers, so the
  // request ends as "failed", not "finished".
  let search = null;
  const decoded = new Map();
  const encoded = new Map();
  cdp.on("Network.responseReceived", ({ requestId, response }) => {
    if (response.url.endsWith("/searchOrders")) search = { requestId, encoding: response.headers["content-encoding"] };
  });
  cdp.on("Network.dataReceived", ({ requestId, dataLength, encodedDataLength }) => {
    decoded.set(requestId, (decoded.get(requestId) ?? 0) + dataLength);
    encoded.set(requestId, (encoded.get(requestId) ?? 0) + encodedDataLength);
  });
  await page.getByLabel("Item contains").fill("wire item");
  await page.click("#search");
  await page.waitForFunction(() => /^10,000 orders/.test(document.querySelector("#search-status").textContent), null, { timeout: 60_000 });
  const onWire = encoded.get(search.requestId);
  const plain = decoded.get(search.requestId);
  assert.equal(search.encoding, "gzip");
  assert.ok(onWire * 4 < plain, `${onWire} bytes on the wire for ${plain}`);
  console.log(`a search of 10 000 orders: ${(onWire / 1024).toFixed(0)} KB on the wire, ${(plain / 1024).toFixed(0)} KB inflated`);
  await context.close();
});
