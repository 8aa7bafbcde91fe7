// Measures the page's two budgets and prints them:
//  - the gzipped size of the wasm module plus its JS glue and snippets (static/pkg), target < 120 KB;
//  - the time from navigation to the first order on screen for /?id=106 on localhost (the page
//    marks "order-shown" when it renders), median of fresh page loads, target < 300 ms.
// Usage: node page-budget.js [--runs N] [--screenshots DIR]
// --screenshots writes the README's pictures of the page into DIR: screenshot.png (light),
// screenshot-dark.png and screenshot-phone.png (375 px wide, dark).
import { readFileSync, readdirSync } from "node:fs";
import { gzipSync } from "node:zlib";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startServer, launchBrowser, visitsOnTheWire } from "./harness.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const runs = Number(option("--runs", "20"));
const screenshots = option("--screenshots", null);

const pkg = path.join(root, "static/pkg");
// The module, its glue and the glue's snippets (pkg/snippets/<crate>/*.js).
const files = ["order_web_client_bg.wasm", "order_web_client.js",
  ...readdirSync(path.join(pkg, "snippets"), { recursive: true }).filter((f) => f.endsWith(".js"))
    .map((f) => path.join("snippets", f))];
let gzipped = 0;
let raw = 0;
for (const file of files) {
  const bytes = readFileSync(path.join(pkg, file));
  raw += bytes.length;
  gzipped += gzipSync(bytes, { level: 9 }).length;
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const server = await startServer();
const browser = await launchBrowser();
const times = [];
let visits = null;
try {
  for (let i = 0; i < runs + 1; i++) {
    // A fresh context each time: nothing cached, as on a first visit.
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${server.url}/?id=106`);
    await page.waitForFunction(() => performance.getEntriesByName("order-shown").length > 0);
    const shown = await page.evaluate(() => performance.getEntriesByName("order-shown")[0].startTime);
    const text = await page.locator("#result").innerText();
    if (!text.includes("Apple iPhone XS")) throw new Error(`order 106 not on screen: ${text}`);
    if (i > 0) times.push(shown); // the first load warms the server and the browser's processes
    await context.close();
  }
  // The bytes on the wire, as Chromium counts them: a first visit, then a repeat visit.
  visits = await visitsOnTheWire(browser, server.url);
  if (screenshots) {
    for (const [file, colorScheme, viewport] of [
      ["screenshot.png", "light", { width: 760, height: 600 }],
      ["screenshot-dark.png", "dark", { width: 760, height: 600 }],
      ["screenshot-phone.png", "dark", { width: 375, height: 740 }],
    ]) {
      const context = await browser.newContext({ colorScheme, viewport });
      const page = await context.newPage();
      await page.goto(`${server.url}/?id=106`);
      await page.locator("#result").waitFor({ state: "visible" });
      await page.getByLabel("Item contains").fill("google");
      await page.click("#search");
      await page.waitForFunction(() => /2 orders/.test(document.querySelector("#search-status").textContent));
      // The phone shows the top of the page, as a person first sees it; the others all of it.
      await page.evaluate(() => scrollTo(0, 0));
      await page.screenshot({ path: path.join(screenshots, file), fullPage: !file.includes("phone") });
      await context.close();
    }
  }
} finally {
  await browser.close();
  await server.stop();
}

const kb = (n) => (n / 1024).toFixed(1);
console.log(`web client size: ${kb(gzipped)} KB gzipped (${kb(raw)} KB raw): wasm + JS glue and snippets, target < 120 KB`);
console.log(`on the wire: first visit ${kb(visits.first.bytes)} KB, repeat visit ${kb(visits.again.bytes)} KB (targets < 140 KB and < 10 KB)`);
console.log(
  `first order on screen (/?id=106, cold cache, ${runs} loads): median ${median(times).toFixed(0)} ms, ` +
    `min ${Math.min(...times).toFixed(0)} ms, max ${Math.max(...times).toFixed(0)} ms, target < 300 ms`,
);
