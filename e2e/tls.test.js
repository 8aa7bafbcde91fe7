// End-to-end over TLS with authentication: the page served by an order-server that speaks TLS
// only and checks tokens, in headless Chromium (which accepts the test's self-signed
// certificate). Refused without a token, served with one, and the add form explains itself.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startServer, launchBrowser, selfSignedTls } from "./harness.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const bin = process.env.ORDER_SERVER_BIN ?? path.join(root, "target/debug/order-server");
const dir = mkdtempSync(path.join(os.tmpdir(), "order-e2e-tls-"));
let server;
let browser;

function token(scope) {
  return execFileSync(bin, ["token", "--secret-file", path.join(dir, "secret"), "--scope", scope,
    "--subject", "e2e"]).toString().trim();
}

before(async () => {
  writeFileSync(path.join(dir, "secret"), "e2e secret\n");
  server = await startServer([...selfSignedTls(dir), "--auth-secret-file", path.join(dir, "secret")],
    { scheme: "https" });
  browser = await launchBrowser(["--ignore-certificate-errors"]);
});

after(async () => {
  await browser?.close();
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test("over TLS, a lookup without a token is refused with a reason, and works once signed in", async () => {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  await page.goto(`${server.url}/?id=106`);
  const error = page.locator("#error");
  await error.waitFor({ state: "visible" });
  assert.match(await error.innerText(), /wants a valid access token.*no token/);
  assert.equal(await page.isVisible("#result"), false);

  await page.getByLabel("Access token").fill(token("orders:read"));
  await page.click("#sign-in");
  assert.match(await page.locator("#token-status").innerText(), /Signed in as e2e; scopes: orders:read/);
  // A read token cannot add: the form says so instead of failing on submit.
  assert.equal(await page.isDisabled("#add"), true);
  assert.match(await page.locator("#add-reason").innerText(), /orders:write/);

  await page.getByLabel("Order ID", { exact: true }).fill("106");
  await page.click("#lookup");
  await page.locator("#result").waitFor({ state: "visible" });
  assert.match(await page.locator("#result").innerText(), /Apple iPhone XS/);

  // The token is kept for the tab (not in the URL) and a reload stays signed in.
  assert.doesNotMatch(page.url(), /token|eyJ/);
  await page.reload();
  // Whichever the page shows first; a refusal or error fails with its text.
  await page.waitForSelector("#result:not([hidden]), #error:not([hidden])");
  const shown = await page.isVisible("#error") ? await page.locator("#error").innerText() : "";
  assert.equal(shown, "", "after a reload the lookup failed");
  assert.equal(await page.isVisible("#result"), true);
  assert.match(await page.locator("#token-status").innerText(), /Signed in as e2e/);

  await page.getByLabel("Access token").fill(token("orders:read orders:write"));
  await page.click("#sign-in");
  assert.equal(await page.isDisabled("#add"), false);
  await context.close();
});

test("a token typed while the web client still loads is kept, and signs in", async () => {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  // A slow network: the module arrives after the token is typed.
  let arrive;
  const arrived = new Promise((resolve) => (arrive = resolve));
  await page.route("**/pkg/*.wasm", async (route) => {
    await arrived;
    await route.continue();
  });
  await page.goto(`${server.url}/`);
  await page.getByLabel("Access token").fill(token("orders:read"));
  arrive();
  await page.waitForSelector("#lookup:not([disabled])");
  await page.click("#sign-in");
  assert.match(await page.locator("#token-status").innerText(), /Signed in as e2e; scopes: orders:read/);
  await page.getByLabel("Order ID", { exact: true }).fill("106");
  await page.click("#lookup");
  await page.locator("#result").waitFor({ state: "visible" });
  assert.match(await page.locator("#result").innerText(), /Apple iPhone XS/);
  await context.close();
});

test("signed in with a bad token, every lookup and import shows the refusal, never a network error", async () => {
  // A well-formed token signed with another secret: the server refuses it at the edge, before it
  // has read the call's body (an import streams its body after the call's head).
  const other = path.join(dir, "other-secret");
  writeFileSync(other, "not the server's secret\n");
  const forged = execFileSync(bin, ["token", "--secret-file", other, "--scope", "orders:write",
    "--subject", "mallory"]).toString().trim();
  const file = path.join(dir, "orders.csv");
  writeFileSync(file, "items,price,destination\n" + Array.from({ length: 40 },
    (_, i) => `Lamp ${i},${i + 1},"Denver, CO"`).join("\n") + "\n");
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  await page.goto(`${server.url}/`);
  await page.waitForSelector("#lookup:not([disabled])");
  await page.getByLabel("Access token").fill(forged);
  await page.click("#sign-in");
  const error = page.locator("#error");
  const imported = page.locator("#import-status");
  for (let i = 1; i <= 20; i++) {
    await page.getByLabel("Order ID", { exact: true }).fill(String(101 + (i % 5)));
    await page.click("#lookup");
    await page.waitForSelector("#lookup:not([disabled])");
    await error.waitFor({ state: "visible" });
    assert.match(await error.innerText(), /wants a valid access token.*signature/, `lookup ${i}`);

    await page.setInputFiles("#import-file", file);
    await page.click("#import");
    await page.waitForFunction(() => {
      const status = document.getElementById("import-status");
      return !status.hidden && !/Importing/.test(status.textContent);
    });
    assert.match(await imported.innerText(), /valid access token.*signature/, `import ${i}`);
  }
  await context.close();
});
