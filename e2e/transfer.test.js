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
