// End-to-end: headless Chromium uses the order page served by order-server, as a person would.
import { test } from "node:test";
import assert from "node:assert/strict";
import { serverAndBrowser } from "./harness.js";

const running = serverAndBrowser();

/** A fresh page that records every console error and uncaught exception. */
async function openPage(query = "") {
  const page = await running.browser.newPage();
  const problems = [];
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console: ${message.text()}`);
  });
  page.on("pageerror", (error) => problems.push(`exception: ${error.message}`));
  await page.goto(`${running.server.url}/${query}`);
  return { page, problems };
}

async function lookUp(page, id, { withEnter = false } = {}) {
  const input = page.getByLabel("Order ID", { exact: true });
  await input.fill(id);
  if (withEnter) await input.press("Enter");
  else await page.click("#lookup");
}

test("typing 106 and pressing the button shows the order", async () => {
  const { page, problems } = await openPage();
  await page.waitForSelector("#lookup:not([disabled])");
  await lookUp(page, "106");
  const result = page.locator("#result");
  await result.waitFor({ state: "visible" });
  const text = await result.innerText();
  assert.match(text, /Apple iPhone XS/);
  assert.match(text, /Amazon Echo/);
  assert.match(text, /\$300\.00/);
  assert.match(text, /Mountain View, CA/);
  assert.equal(await page.locator("#result li").count(), 2, "items are a list");
  assert.equal(await page.isVisible("#error"), false);
  assert.deepEqual(problems, []);
  await page.close();
});

test("an unknown ID shows not found and no stale order", async () => {
  const { page, problems } = await openPage();
  await page.waitForSelector("#lookup:not([disabled])");
  await lookUp(page, "106");
  await page.locator("#result").waitFor({ state: "visible" });

  await lookUp(page, "999", { withEnter: true });
  const error = page.locator("#error");
  await error.waitFor({ state: "visible" });
  assert.match(await error.innerText(), /not found/i);
  assert.match(await error.innerText(), /999/);
  assert.equal(await page.isVisible("#result"), false, "the previous order is gone");
  assert.equal(await page.locator("body").innerText().then((t) => t.includes("Apple iPhone XS")), false);
  assert.deepEqual(problems, []);
  await page.close();
});

test("?id=106 in the URL looks the order up on load", async () => {
  const { page, problems } = await openPage("?id=106");
  await page.locator("#result").waitFor({ state: "visible" });
  assert.match(await page.locator("#result").innerText(), /Apple iPhone XS/);
  assert.equal(await page.inputValue("#order-id"), "106");
  assert.deepEqual(problems, []);
  await page.close();
});

test("the button says it is busy while a call is in flight, and keeps focus", async () => {
  const { page, problems } = await openPage();
  await page.waitForSelector("#lookup:not([disabled])");
  let release;
  const held = new Promise((resolve) => (release = resolve));
  let arrived;
  const callArrived = new Promise((resolve) => (arrived = resolve));
  await page.route("**/OrderManagement/getOrder", async (route) => {
    arrived();
    await held;
    await route.continue();
  });
  await lookUp(page, "105");
  await callArrived;
  assert.equal(await page.getAttribute("#lookup", "aria-disabled"), "true", "busy during the call");
  release();
  await page.locator("#result").waitFor({ state: "visible" });
  await page.waitForFunction(() => !document.querySelector("#lookup").hasAttribute("aria-disabled"));
  assert.equal(await page.isDisabled("#lookup"), false, "usable again after it");
  assert.match(await page.locator("#result").innerText(), /Amazon Echo/);
  assert.deepEqual(problems, []);
  await page.close();
});

test("an empty lookup asks for an ID instead of calling", async () => {
  const { page } = await openPage();
  await page.waitForSelector("#lookup:not([disabled])");
  await page.getByLabel("Order ID", { exact: true }).fill("   ");
  await page.getByLabel("Order ID", { exact: true }).press("Enter");
  // `required` lets whitespace through; the page itself explains.
  await page.locator("#error").waitFor({ state: "visible" });
  assert.match(await page.locator("#error").innerText(), /Enter an order ID/);
  await page.close();
});

test("a search shows every matching order as it streams in", async () => {
  const { page, problems } = await openPage();
  await page.waitForSelector("#search:not([disabled])");
  await page.getByLabel("Item contains").fill("google");
  await page.click("#search");
  await page.waitForFunction(() => /2 orders/.test(document.querySelector("#search-status").textContent));
  const results = await page.locator("#search-results li").allInnerTexts();
  assert.equal(results.length, 2);
  assert.match(results[0], /^Order 102 .*Google Pixel 3A/);
  assert.match(results[1], /^Order 104 .*Google Home Mini/);

  await page.getByLabel("Item contains").fill("Nokia");
  await page.getByLabel("Item contains").press("Enter");
  await page.waitForFunction(() => /No order/.test(document.querySelector("#search-status").textContent));
  assert.equal(await page.locator("#search-results li").count(), 0);

  // A result is a link that looks the order up.
  await page.getByLabel("Item contains").fill("echo");
  await page.click("#search");
  await page.waitForFunction(() => /2 orders/.test(document.querySelector("#search-status").textContent));
  await page.click("#search-results li >> text=Order 106");
  await page.locator("#result").waitFor({ state: "visible" });
  assert.match(await page.locator("#result").innerText(), /Apple iPhone XS/);
  assert.deepEqual(problems, []);
  await page.close();
});

test("the add form shows field errors beside the fields, then adds a valid order", async () => {
  const { page, problems } = await openPage();
  await page.waitForSelector("#add:not([disabled])");
  await page.getByLabel("Price (USD)").fill("-5");
  await page.click("#add");
  await page.locator("[data-error-for=items]").waitFor({ state: "visible" });
  assert.match(await page.locator("[data-error-for=items]").innerText(), /at least one item/);
  assert.match(await page.locator("[data-error-for=price]").innerText(), /must not be negative/);
  assert.match(await page.locator("[data-error-for=destination]").innerText(), /must not be empty/);
  assert.equal(await page.isVisible("[data-error-for=description]"), false);
  assert.equal(await page.getAttribute("#add-price", "aria-invalid"), "true");

  await page.getByLabel("Items").fill("Desk lamp\nBulb");
  await page.getByLabel("Destination").fill("Denver, CO");
  await page.getByLabel("Price (USD)").fill("42.5");
  await page.click("#add");
  await page.waitForFunction(() => /Added order/.test(document.querySelector("#add-status").textContent));
  const id = (await page.locator("#add-status a").innerText()).trim();
  assert.ok(id.length > 0);
  assert.equal(await page.isVisible("[data-error-for=price]"), false, "old errors are cleared");

  await lookUp(page, id);
  await page.locator("#result").waitFor({ state: "visible" });
  const text = await page.locator("#result").innerText();
  assert.match(text, /Desk lamp/);
  assert.match(text, /\$42\.50/);
  assert.deepEqual(problems, []);
  await page.close();
});
