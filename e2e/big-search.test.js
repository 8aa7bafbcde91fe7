// A search that matches 20 000 orders must not freeze the tab: the first results show at once,
// the page stays responsive to typing, the DOM stays small, and a new search cancels the old one.
import { test } from "node:test";
import assert from "node:assert/strict";
import { serverAndBrowser } from "./harness.js";

const MATCHES = 20_000;

let page;

// The page, with 20 000 orders in the server.
const running = serverAndBrowser(async ({ server, browser }) => {
  page = await browser.newPage();
  await page.goto(`${server.url}/`);
  await page.waitForSelector("#import:not([disabled])");
  // The orders go in through the page's own import, as a person would load them: two files, as
  // addOrders takes at most 10 000 orders a call.
  for (let file = 0; file < 2; file++) {
    const lines = ["items,price,destination"];
    for (let i = file * (MATCHES / 2); i < (file + 1) * (MATCHES / 2); i++) lines.push(`bulk item ${i};spare,${i % 100},Reno NV`);
    await page.setInputFiles("#import-file", { name: "bulk.csv", mimeType: "text/csv", buffer: Buffer.from(lines.join("\n")) });
    await page.click("#import");
    await page.waitForFunction(() => !document.querySelector("#import-status").hidden && !document.querySelector("#import").hasAttribute("aria-disabled"),
      null, { timeout: 120_000 });
    assert.match(await page.locator("#import-status").innerText(), /^Imported bulk.csv/);
  }
});

/** The server's count of searchOrders calls that ended with `code`. */
async function searchesEnded(code) {
  const text = await (await fetch(`${running.server.url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("grpc_server_handled_total{") &&
    l.includes('grpc_method="searchOrders"') && l.includes(`grpc_code="${code}"`));
  return line ? Number(line.split(" ").pop()) : 0;
}

const nodes = () => page.evaluate(() => {
  const walker = document.createTreeWalker(document, NodeFilter.SHOW_ALL);
  let n = 0;
  while (walker.nextNode()) n++;
  return n;
});

test(`a search matching ${MATCHES} orders shows them without freezing the tab`, async () => {
  // Long tasks, the first result, and how late a key typed mid-search shows, all as the page sees them.
  await page.evaluate(() => {
    const seen = (globalThis.seen = { longTasks: [], firstResult: null, submitted: null, keyDelay: null, keyMidSearch: null });
    new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) seen.longTasks.push(Math.round(entry.duration));
    }).observe({ type: "longtask" });
    document.querySelector("#search-form").addEventListener("submit", () => (seen.submitted = performance.now()), { capture: true });
    new MutationObserver(() => {
      if (seen.firstResult === null && document.querySelector("#search-results li")) seen.firstResult = performance.now();
    }).observe(document.querySelector("#search-results"), { childList: true });
    document.querySelector("#order-id").addEventListener("input", (event) => {
      seen.keyMidSearch = document.querySelector("#search-form").hasAttribute("aria-busy");
      // The frame that shows the key is the next one drawn.
      requestAnimationFrame(() => (seen.keyDelay = performance.now() - event.timeStamp));
    });
  });
  await page.getByLabel("Item contains").fill("BULK");
  await page.click("#search");
  await page.waitForSelector("#search-results li");
  await page.focus("#order-id");
  await page.keyboard.press("7");
  await page.waitForFunction((n) => document.querySelector("#search-status").textContent.startsWith(`${n.toLocaleString("en-US")} orders`),
    MATCHES, { timeout: 120_000 });
  const seen = await page.evaluate(() => globalThis.seen);

  const firstMs = seen.firstResult - seen.submitted;
  assert.ok(firstMs < 500, `first result on screen after ${firstMs.toFixed(0)} ms`);
  assert.ok(seen.keyMidSearch, "the key was typed while the search was still streaming");
  assert.ok(seen.keyDelay < 100, `a key typed mid-search showed after ${seen.keyDelay?.toFixed(0)} ms`);
  assert.deepEqual(seen.longTasks.filter((ms) => ms > 100), [], "no task over 100 ms");
  assert.equal(await page.locator("#search-results li").count(), 100, "the first 100 are listed");
  assert.ok((await nodes()) < 5000, `${await nodes()} DOM nodes`);

  // Show more adds the next 100.
  await page.getByRole("button", { name: "Show 100 more" }).click();
  assert.equal(await page.locator("#search-results li").count(), 200);
  assert.match(await page.locator("#search-results li").nth(199).innerText(), /bulk item/);
  assert.match(await page.locator("#search-progress").innerText(), /Showing the first 200/);
});

test("a second search started mid-stream cancels the first on the server", async () => {
  const cancelledBefore = await searchesEnded("Canceled");
  await page.getByLabel("Item contains").fill("bulk");
  await page.click("#search");
  await page.waitForSelector("#search-results li");
  assert.ok(await page.evaluate(() => document.querySelector("#search-form").hasAttribute("aria-busy")), "still streaming");
  await page.getByLabel("Item contains").fill("spare");
  await page.click("#search");
  await page.waitForFunction((n) => document.querySelector("#search-status").textContent.startsWith(`${n.toLocaleString("en-US")} orders`),
    MATCHES, { timeout: 120_000 });
  // The first search's call ends on the server as cancelled (its metrics are recorded as it ends).
  const deadline = Date.now() + 10_000;
  while ((await searchesEnded("Canceled")) === cancelledBefore && Date.now() < deadline) {
    await new Promise((resolve) => setImmediate(resolve));
  }
  assert.equal(await searchesEnded("Canceled"), cancelledBefore + 1, "the first search was cancelled");
  assert.match(await page.locator("#search-results li").first().innerText(), /spare/, "only the second search's results");
});

test("an import with 10 000 bad lines names the first and counts the rest, without freezing", async () => {
  await page.evaluate(() => {
    globalThis.importLongTasks = [];
    new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) globalThis.importLongTasks.push(Math.round(entry.duration));
    }).observe({ type: "longtask" });
  });
  const lines = ["items,price,destination"];
  for (let i = 0; i < 10_000; i++) lines.push(`bad ${i},-1,Reno NV`);
  await page.setInputFiles("#import-file", { name: "bad.csv", mimeType: "text/csv", buffer: Buffer.from(lines.join("\n")) });
  await page.click("#import");
  await page.waitForFunction(() => /Nothing was imported/.test(document.querySelector("#import-status").textContent), null, { timeout: 120_000 });
  // The server names the first ten bad fields and counts the others; the page says both.
  assert.equal(await page.locator("#import-errors li").count(), 10);
  assert.match(await page.locator("#import-errors li").first().innerText(), /^Line 2: price must not be negative/);
  assert.match(await page.locator("#import-status").innerText(), /first 10 problems are listed; [\d,]+ more were found/);
  assert.ok((await nodes()) < 5000, `${await nodes()} DOM nodes`);
  const long = await page.evaluate(() => globalThis.importLongTasks.filter((ms) => ms > 100));
  assert.deepEqual(long, [], "no task over 100 ms");
});
