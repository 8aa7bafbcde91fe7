// Shared by the browser tests and the page benchmark: a live order-server on a free loopback port
// and Debian's Chromium driven by playwright-core (which never downloads a browser).
import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { after, before } from "node:test";
import { chromium } from "playwright-core";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

/**
 * Starts order-server on 127.0.0.1:0 with a new SQLite database of its own (deleted by stop());
 * resolves to { url, stop() } once it listens.
 */
export async function startServer(args = [], { scheme = "http" } = {}) {
  const bin = process.env.ORDER_SERVER_BIN ?? path.join(root, "target/debug/order-server");
  const data = mkdtempSync(path.join(os.tmpdir(), "order-e2e-"));
  const database = `sqlite:${path.join(data, "orders.db")}`;
  const child = spawn(bin, ["--listen", "127.0.0.1:0", "--database", database, ...args], {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "info", NO_COLOR: "1" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  const address = await new Promise((resolve, reject) => {
    child.stderr.on("data", (chunk) => {
      log += chunk;
      const match = /address=(\S+)/.exec(log);
      if (match) resolve(match[1]);
    });
    child.on("exit", (code) => reject(new Error(`order-server exited (${code}) before listening:\n${log}`)));
    child.on("error", reject);
  });
  return {
    url: `${scheme}://${address}`,
    async stop() {
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        await once(child, "exit");
      }
      rmSync(data, { recursive: true, force: true });
    },
  };
}

/**
 * Makes a self-signed certificate for 127.0.0.1 (and its key) in `dir`; returns the flags that
 * have order-server serve TLS with it.
 */
export function selfSignedTls(dir) {
  const cert = path.join(dir, "cert.pem");
  const key = path.join(dir, "key.pem");
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
    "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
    "-keyout", key, "-out", cert], { stdio: "ignore" });
  return ["--tls-cert", cert, "--tls-key", key];
}

/** Headless Chromium from Debian, without any network access beyond what the page asks for. */
export function launchBrowser(extraArgs = []) {
  return chromium.launch({
    executablePath: process.env.CHROME_BIN ?? "/usr/bin/chromium",
    headless: true,
    args: [
      ...extraArgs,
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/**
 * A test file's order-server and Chromium, as `server` and `browser` of what this returns: started
 * before the file's tests (then `setUp(running)`, if given, in the same hook: Node 20 runs a file's
 * top-level `before` hooks at once, not one after the other), stopped after them.
 */
export function serverAndBrowser(setUp = async () => {}) {
  const running = {};
  before(async () => {
    running.server = await startServer();
    running.browser = await launchBrowser();
    await setUp(running);
  });
  after(async () => {
    await running.browser?.close();
    await running.server?.stop();
  });
  return running;
}

/**
 * The page on the wire, as Chromium counts it (headers and bodies of every response): a first
 * visit to `${url}/?id=106` in a new browser context, then a repeat visit to `${url}/?id=105` in
 * the same one, each until its order is on screen. Resolves to `{ first, again }`, each
 * `{ bytes, byPath }`.
 */
export async function visitsOnTheWire(browser, url) {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    const counter = await wireCounter(page);
    const visit = async (id) => {
      counter.reset();
      await page.goto(`${url}/?id=${id}`);
      await page.locator("#result").waitFor({ state: "visible" });
      return { bytes: counter.total(), byPath: counter.byPath() };
    };
    return { first: await visit(106), again: await visit(105) };
  } finally {
    await context.close();
  }
}

/** Counts the bytes each response took on the wire (headers and body), by URL path. */
async function wireCounter(page) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Network.enable");
  const urls = new Map();
  const bytes = new Map();
  cdp.on("Network.responseReceived", ({ requestId, response }) => urls.set(requestId, new URL(response.url).pathname));
  cdp.on("Network.loadingFinished", ({ requestId, encodedDataLength }) => {
    const path = urls.get(requestId) ?? "?";
    bytes.set(path, (bytes.get(path) ?? 0) + encodedDataLength);
  });
  return {
    total: () => [...bytes.values()].reduce((a, b) => a + b, 0),
    byPath: () => Object.fromEntries(bytes),
    reset: () => bytes.clear(),
  };
}
