// The page in a second engine: Debian's Firefox ESR, driven by puppeteer-core over WebDriver BiDi
// (never a downloaded browser), against an order-server that speaks TLS. Firefox speaks gRPC-Web
// over HTTP/2 like Chromium, but cannot stream an upload: the page must say so, naming the
// browser rather than the protocol, and import files whole.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import puppeteer from "puppeteer-core";
import { startServer, selfSignedTls } from "./harness.js";

const dir = mkdtempSync(path.join(os.tmpdir(), "order-e2e-firefox-"));
let server;
let browser;

before(async () => {
  server = await startServer(selfSignedTls(dir), { scheme: "https" });
  browser = await puppeteer.launch({
    browser: "firefox",
    executablePath: process.env.FIREFOX_BIN ?? "/usr/bin/firefox-esr",
    headless: true,
    acceptInsecureCerts: true,
    // The machine's network is closed: no updates, telemetry or captive-portal probes.
    extraPrefsFirefox: {
      "app.update.enabled": false,
      "network.captive-portal-service.enabled": false,
      "network.connectivity-service.enabled": false,
      "datareporting.policy.dataSubmissionEnabled": false,
      "toolkit.telemetry.enabled": false,
      "browser.safebrowsing.malware.enabled": false,
      "browser.safebrowsing.phishing.enabled": false,
    },
  });
});

after(async () => {
  await browser?.close();
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test("Firefox: the page over TLS looks an order up, and imports whole, naming the browser as the reason", async () => {
  const page = await browser.newPage();
  await page.goto(`${server.url}/?id=106`);
  await page.waitForSelector("#result:not([hidden])");
  assert.match(await page.$eval("#result", (e) => e.innerText), /Apple iPhone XS/);

  await page.waitForFunction(() => document.getElementById("import-mode").textContent !== "");
  const mode = await page.$eval("#import-mode", (e) => e.innerText);
  assert.match(mode, /up to 4 MiB: this browser cannot stream an upload \(Chromium-based browsers can\)/);
  assert.doesNotMatch(mode, /--tls-cert|https:\/\//);

  const file = path.join(dir, "orders.csv");
  writeFileSync(file, "items,price,destination\nFirefox mug,12,\"Portland, OR\"\nFirefox cap,8,\"Salem, OR\"\n");
  const input = await page.$("#import-file");
  await input.uploadFile(file);
  await page.click("#import");
  await page.waitForFunction(() => /Imported|Nothing was imported|failed/i.test(
    document.getElementById("import-status").textContent));
  assert.match(await page.$eval("#import-status", (e) => e.innerText), /Imported orders\.csv in [\d.]+ s: added 2 orders/);
  await page.close();
});
