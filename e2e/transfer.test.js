// What the page costs on the wire, as Chromium counts it: the first visit (everything compressed)
// and a repeat visit (everything revalidated, nothing sent again).
import { test } from "node:test";
import assert from "node:assert/strict";
import { serverAndBrowser, visitsOnTheWire } from "./harness.js";

const running = serverAndBrowser();

test("the first visit transfers under 140 KB, a repeat visit under 10 KB", async () => {
  const { first, again } = await visitsOnTheWire(running.browser, running.server.url);
  assert.ok(first.bytes < 140 * 1024, `first visit: ${first.bytes} bytes ${JSON.stringify(first.byPath)}`);
  assert.ok(again.bytes < 10 * 1024, `repeat visit: ${again.bytes} bytes ${JSON.stringify(again.byPath)}`);
  console.log(`the page on the wire: first visit ${(first.bytes / 1024).toFixed(1)} KB, repeat visit ${(again.bytes / 1024).toFixed(1)} KB`);
});

test("a search of 10 000 orders arrives gzipped", async () => {
  const context = await running.browser.newContext();
  const page = await context.newPage();
  await page.goto(`${running.server.url}/`);
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
