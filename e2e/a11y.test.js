// The page for every person: axe-core judges it in light and dark and at phone width, in each state
// a person brings it to; nothing scrolls sideways; a keyboard alone reaches and works every control.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { serverAndBrowser } from "./harness.js";

const axePath = createRequire(import.meta.url).resolve("axe-core/axe.min.js");

const running = serverAndBrowser();

const MODES = [
  { name: "light", colorScheme: "light", viewport: { width: 1280, height: 800 } },
  { name: "dark", colorScheme: "dark", viewport: { width: 1280, height: 800 } },
  { name: "light at 375×740", colorScheme: "light", viewport: { width: 375, height: 740 } },
  { name: "dark at 375×740", colorScheme: "dark", viewport: { width: 375, height: 740 } },
  { name: "dark at 320×640", colorScheme: "dark", viewport: { width: 320, height: 640 } },
];

async function openPage(mode) {
  const context = await running.browser.newContext({ colorScheme: mode.colorScheme, viewport: mode.viewport });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(`exception: ${error.message}`));
  await page.goto(`${running.server.url}/`);
  await page.waitForSelector("#lookup:not([disabled])");
  await page.addScriptTag({ path: axePath });
  return { context, page, problems };
}

/** axe-core's violations of any impact, one readable line per element, and any sideways scroll. */
async function judge(page, state) {
  const found = await page.evaluate(async () => {
    const { violations } = await globalThis.axe.run(document, { resultTypes: ["violations"] });
    return violations.flatMap((v) =>
      v.nodes.map((n) => `${v.id} (${v.impact}) at ${n.target.join(" ")}: ${n.failureSummary.replace(/\s+/g, " ")}`),
    );
  });
  const overflow = await page.evaluate(() => {
    const width = document.documentElement.clientWidth;
    const wide = [...document.querySelectorAll("body *")]
      .filter((e) => e.getClientRects().length && e.getBoundingClientRect().right > width + 0.5)
      .map((e) => `${e.tagName.toLowerCase()}${e.id ? `#${e.id}` : ""} ends at ${Math.round(e.getBoundingClientRect().right)} px`);
    const scroll = document.documentElement.scrollWidth;
    return scroll > width ? [`the page is ${scroll} px wide in a ${width} px window: ${wide.slice(0, 5).join("; ")}`] : [];
  });
  return [...found, ...overflow].map((line) => `${state}: ${line}`);
}

const BAD_IMPORT = [
  "items,price,destination",
  "Desk lamp,12.5,Denver",
  "Bulb,-3,Denver",
  ",4,Austin",
  "Chair,20,",
].join("\n");

for (const mode of MODES) {
  test(`axe-core finds nothing and nothing scrolls sideways (${mode.name})`, async () => {
    const { context, page, problems } = await openPage(mode);
    const found = await judge(page, "on load");

    await page.getByLabel("Order ID", { exact: true }).fill("106");
    await page.click("#lookup");
    await page.locator("#result").waitFor({ state: "visible" });
    found.push(...(await judge(page, "after a lookup")));

    await page.getByLabel("Order ID", { exact: true }).fill("999999999");
    await page.click("#lookup");
    await page.locator("#error").waitFor({ state: "visible" });
    found.push(...(await judge(page, "after a not-found")));

    await page.getByLabel("Item contains").fill("google");
    await page.click("#search");
    await page.waitForFunction(() => /2 orders/.test(document.querySelector("#search-status").textContent));
    found.push(...(await judge(page, "after a search")));

    await page.getByLabel("Price (USD)").fill("-5");
    await page.click("#add");
    await page.locator("[data-error-for=items]").waitFor({ state: "visible" });
    found.push(...(await judge(page, "after an add with field errors")));

    await page.setInputFiles("#import-file", { name: "bad.csv", mimeType: "text/csv", buffer: Buffer.from(BAD_IMPORT) });
    await page.click("#import");
    await page.locator("#import-errors li").first().waitFor();
    found.push(...(await judge(page, "after an import with bad lines")));

    assert.equal(found.length, 0, `${found.length} problems:\n${found.join("\n")}`);
    assert.deepEqual(problems, []);
    await context.close();
  });
}

const focused = (page) => page.evaluate(() => document.activeElement?.id || document.activeElement?.tagName);

test("a keyboard alone reaches every control, in order, and Enter acts on each button", async () => {
  const { context, page, problems } = await openPage(MODES[0]);
  const reached = [];
  for (let i = 0; i < 40; i++) {
    await page.keyboard.press("Tab");
    const id = await focused(page);
    if (id === "process") break;
    reached.push(id);
  }
  reached.push("process");
  const controls = ["token", "sign-in", "order-id", "lookup", "search-text", "search", "add-items",
    "add-destination", "add-price", "add-description", "add-id", "add", "import-file", "import", "process-ids", "process"];
  assert.deepEqual(reached.filter((id) => controls.includes(id)), controls, `Tab went through ${reached.join(", ")}`);

  // Enter on a button acts, and the button keeps focus while and after the call runs.
  await page.getByLabel("Order ID", { exact: true }).fill("106");
  await page.focus("#lookup");
  await page.keyboard.press("Enter");
  await page.locator("#result").waitFor({ state: "visible" });
  await page.waitForFunction(() => !document.querySelector("#lookup-form").hasAttribute("aria-busy"));
  assert.equal(await focused(page), "lookup", "focus stays on Look up");

  await page.getByLabel("Item contains").fill("echo");
  await page.focus("#search");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => /2 orders/.test(document.querySelector("#search-status").textContent));
  assert.equal(await focused(page), "search", "focus stays on Search");

  // An invalid add: focus goes to the first invalid field, which names its error.
  await page.getByLabel("Price (USD)").fill("-5");
  await page.focus("#add");
  await page.keyboard.press("Enter");
  await page.locator("[data-error-for=items]").waitFor({ state: "visible" });
  await page.waitForFunction(() => document.activeElement?.id === "add-items", null, { timeout: 2000 })
    .catch(() => {});
  assert.equal(await focused(page), "add-items", "focus on the first invalid field");
  assert.equal(await page.getAttribute("#add-items", "aria-invalid"), "true");

  // Fixed, Enter on the focused button adds it, and focus stays there.
  await page.getByLabel("Items").fill("Desk lamp");
  await page.getByLabel("Destination").fill("Denver, CO");
  await page.getByLabel("Price (USD)").fill("42.5");
  await page.focus("#add");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => /Added order/.test(document.querySelector("#add-status").textContent));
  assert.equal(await focused(page), "add", "focus stays on Add order");

  // A repeat press while a call runs does nothing: one call, not two.
  let calls = 0;
  let release;
  const held = new Promise((resolve) => (release = resolve));
  await page.route("**/OrderManagement/getOrder", async (route) => {
    calls++;
    await held;
    await route.continue();
  });
  await page.getByLabel("Order ID", { exact: true }).fill("105");
  await page.focus("#lookup");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.querySelector("#lookup").getAttribute("aria-disabled") === "true");
  await page.keyboard.press("Enter");
  assert.equal(await focused(page), "lookup", "a busy button keeps focus");
  release();
  await page.locator("#result").waitFor({ state: "visible" });
  await page.waitForFunction(() => document.querySelector("#lookup").getAttribute("aria-disabled") !== "true");
  assert.equal(calls, 1, "the press while busy made no second call");
  assert.deepEqual(problems, []);
  await context.close();
});
