// The order lookup page. It loads the wasm client built into ./pkg/ by `wasm-pack build --target web`
// and calls the service over gRPC-Web on this page's own origin.

const $ = (id) => document.getElementById(id);
const form = $("lookup-form");
const input = $("order-id");
const button = $("lookup");
const result = $("result");
const errorBox = $("error");

const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });

let client = null;
let lookupSeq = 0;

// A button whose call is running keeps focus and says it is busy (`aria-disabled`); its handler
// ignores presses until the call ends. A `disabled` button would drop focus to <body>, and the next
// Tab would start again from the top of the page.
function setBusy(button, busy) {
  if (busy) button.setAttribute("aria-disabled", "true");
  else button.removeAttribute("aria-disabled");
}
const isBusy = (button) => button.getAttribute("aria-disabled") === "true";

// How many results a list shows at first and adds per "Show more", and how many it keeps in
// memory for that button: a search may match a million orders, the page counts them all but
// keeps only these.
const PAGE = 100;
const KEPT = 10_000;

// A list filled by a stream without freezing the page: items are kept in an array as they arrive
// and drawn once per animation frame, never more than the page asked to show. `render` makes one
// item's <li>; `onDraw` runs after each frame's drawing (to say how many so far).
class StreamedList {
  constructor(list, render, onDraw = () => {}) {
    this.list = list;
    this.render = render;
    this.onDraw = onDraw;
    this.more = Object.assign(document.createElement("button"), { type: "button", className: "secondary more", hidden: true });
    this.more.addEventListener("click", () => {
      this.limit += PAGE;
      this.draw();
    });
    list.after(this.more);
    this.reset();
  }

  reset() {
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.items = [];
    this.total = 0;
    this.limit = PAGE;
    this.list.replaceChildren();
    this.more.hidden = true;
  }

  push(item) {
    if (this.items.length < KEPT) this.items.push(item);
    this.total++;
    this.frame ||= requestAnimationFrame(() => this.draw());
  }

  draw() {
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    const shown = this.list.childElementCount;
    const upTo = Math.min(this.limit, this.items.length);
    if (upTo > shown) {
      const fragment = document.createDocumentFragment();
      for (let i = shown; i < upTo; i++) fragment.append(this.render(this.items[i]));
      this.list.append(fragment);
    }
    const waiting = this.items.length - upTo;
    this.more.hidden = waiting === 0;
    this.more.textContent = `Show ${Math.min(PAGE, waiting).toLocaleString("en-US")} more`;
    this.onDraw(this);
  }

  // How many are on screen, and why the others are not, for a status line; "" when all are.
  get summary() {
    const shown = Math.min(this.limit, this.items.length);
    if (shown === this.total) return "";
    const kept = this.items.length < this.total ? ` The page keeps the first ${KEPT.toLocaleString("en-US")}.` : "";
    return `Showing the first ${shown.toLocaleString("en-US")}.${kept}`;
  }
}

const count = (n, one, many = `${one}s`) => `${n.toLocaleString("en-US")} ${n === 1 ? one : many}`;

function showError(message) {
  result.hidden = true;
  errorBox.textContent = message;
  errorBox.hidden = false;
}

function field(name) {
  return result.querySelector(`[data-field="${name}"]`);
}

function showOrder(order) {
  errorBox.hidden = true;
  field("id").textContent = order.id;
  const items = field("items");
  items.replaceChildren(
    ...order.items.map((item) => {
      const li = document.createElement("li");
      li.textContent = item;
      return li;
    }),
  );
  const description = field("description");
  description.textContent = order.description || "None";
  description.classList.toggle("muted", !order.description);
  field("price").textContent = money.format(order.price);
  field("destination").textContent = order.destination;
  result.hidden = false;
}

// Why the server refused a call, for a person; null when it did not refuse.
function refusal(error) {
  switch (error.codeName) {
    case "Unauthenticated":
      return `The server wants a valid access token: ${error.message}. Sign in above.`;
    case "PermissionDenied":
      return `Your access token does not allow this: ${error.message}.`;
    default:
      return null;
  }
}

// A sentence for a person, from the client's Error (which carries the gRPC code name).
function describe(error, id) {
  const refused = refusal(error);
  if (refused) return refused;
  switch (error.codeName) {
    case "NotFound":
      return `Order ${id} was not found.`;
    case "InvalidArgument":
      return `That is not a valid order ID: ${error.message}`;
    case "Unavailable":
      return `The order service cannot be reached right now (${error.message}).`;
    case "DeadlineExceeded":
      return "The order service took too long to answer. Please try again.";
    default:
      return `The lookup failed: ${error.message}`;
  }
}

async function lookup(id) {
  id = id.trim();
  if (!id) {
    showError("Enter an order ID, such as 106.");
    return;
  }
  const seq = ++lookupSeq;
  // A new lookup never leaves the previous order on screen.
  result.hidden = true;
  errorBox.hidden = true;
  setBusy(button, true);
  form.setAttribute("aria-busy", "true");
  try {
    const order = await client.getOrder(id);
    if (seq === lookupSeq) {
      showOrder(order);
      performance.mark("order-shown");
    }
  } catch (error) {
    if (seq === lookupSeq) showError(describe(error, id));
  } finally {
    if (seq === lookupSeq) {
      setBusy(button, false);
      form.removeAttribute("aria-busy");
    }
  }
  const url = new URL(location.href);
  url.searchParams.set("id", id);
  history.replaceState(null, "", url);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (client && !isBusy(button)) lookup(input.value);
});

// ---- search: results are shown as the server streams them -------------------------------------

const searchForm = $("search-form");
const searchResults = $("search-results");
const searchStatus = $("search-status");
const searchProgress = $("search-progress");

function orderSummary(order) {
  const li = document.createElement("li");
  const link = document.createElement("a");
  link.href = `?id=${encodeURIComponent(order.id)}`;
  link.textContent = `Order ${order.id}`;
  link.addEventListener("click", (event) => {
    event.preventDefault();
    input.value = order.id;
    lookup(order.id);
    input.scrollIntoView({ behavior: "smooth", block: "center" });
  });
  li.append(link, ` ${order.items.join(", ")} to ${order.destination}, ${money.format(order.price)}`);
  return li;
}

// The running search's controller: a new search, or leaving the page, aborts it, and the client
// cancels the call (the server stops working on it).
let searching = null;
// Above the list, outside the live region (it changes every frame): how many so far, and how many
// are on screen.
const searchList = new StreamedList(searchResults, orderSummary, (list) => {
  searchProgress.textContent = searching ? `${count(list.total, "order")} found so far. ${list.summary}` : list.summary;
});
addEventListener("pagehide", () => searching?.abort());

// The Search button is never busy: pressing it again starts the search again.
searchForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!client) return;
  searching?.abort();
  const controller = (searching = new AbortController());
  const text = $("search-text").value.trim();
  searchList.reset();
  searchStatus.classList.remove("error");
  searchStatus.textContent = "Searching…";
  searchStatus.hidden = false;
  searchProgress.textContent = "";
  searchForm.setAttribute("aria-busy", "true");
  let outcome;
  try {
    const total = await client.searchOrders(text, (order) => searchList.push(order), controller.signal);
    const what = text ? `with an item containing “${text}”` : "in all";
    outcome = total === 0 ? `No order has an item containing “${text}”.` : `${count(total, "order")} ${what}.`;
  } catch (error) {
    if (controller.signal.aborted) return; // a newer search took over
    outcome = refusal(error) ?? `The search failed: ${error.message}`;
    searchStatus.classList.add("error");
  } finally {
    if (searching === controller) {
      searching = null;
      searchForm.removeAttribute("aria-busy");
    }
  }
  searchStatus.textContent = outcome;
  searchList.draw();
});

// ---- add: field errors from the server appear next to their fields ----------------------------

const addForm = $("add-form");
const addButton = $("add");
const addStatus = $("add-status");

function clearFieldErrors() {
  for (const box of addForm.querySelectorAll("[data-error-for]")) {
    box.hidden = true;
    box.textContent = "";
  }
  for (const field of addForm.querySelectorAll("[aria-invalid]")) field.removeAttribute("aria-invalid");
}

// "items[2]" -> the items box; each violation is shown beside the field it names.
function showFieldErrors(violations) {
  for (const { field, description } of violations) {
    const name = field.replace(/\[\d+\]$/, "");
    const box = addForm.querySelector(`[data-error-for="${name}"]`);
    if (!box) continue;
    const index = /\[(\d+)\]$/.exec(field);
    const text = index ? `Item ${Number(index[1]) + 1} ${description}.` : `${capitalize(name)} ${description}.`;
    box.textContent = box.textContent ? `${box.textContent} ${text}` : text;
    box.hidden = false;
    $(`add-${name}`).setAttribute("aria-invalid", "true");
  }
}

const capitalize = (word) => word.charAt(0).toUpperCase() + word.slice(1);

// One idempotency key per order as typed: sending the same order again (a second click while
// the first is on its way, a retry after a network error) can never store it twice; an order
// that changed gets a new key, and so does the next one after a success.
let pendingAdd = null; // { text, key }
let adding = false;
const newKey = () =>
  globalThis.crypto.randomUUID?.() ??
  Array.from(crypto.getRandomValues(new Uint32Array(4)), (n) => n.toString(16).padStart(8, "0")).join("");

addForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!client || adding) return;
  clearFieldErrors();
  addStatus.hidden = true;
  addStatus.classList.remove("error");
  const priceText = $("add-price").value.trim();
  const order = {
    id: $("add-id").value.trim(),
    items: $("add-items").value.split("\n").map((item) => item.trim()).filter(Boolean),
    description: $("add-description").value.trim(),
    price: priceText === "" ? NaN : Number(priceText),
    destination: $("add-destination").value.trim(),
  };
  const text = JSON.stringify(order);
  if (pendingAdd?.text !== text) pendingAdd = { text, key: newKey() };
  setBusy(addButton, true);
  adding = true;
  try {
    const id = await client.addOrder(order, pendingAdd.key);
    pendingAdd = null;
    addForm.reset();
    addStatus.replaceChildren("Added order ", Object.assign(document.createElement("a"), {
      href: `?id=${encodeURIComponent(id)}`,
      textContent: id,
    }), ".");
    addStatus.hidden = false;
  } catch (error) {
    if (error.fieldViolations?.length) {
      showFieldErrors(error.fieldViolations);
      addStatus.textContent = "Please correct the highlighted fields.";
      // The person goes straight to the first field to fix; it names its error.
      addForm.querySelector('[aria-invalid="true"]')?.focus();
    } else {
      addStatus.textContent = refusal(error) ?? `The order was not added: ${error.message}`;
    }
    addStatus.classList.add("error");
    addStatus.hidden = false;
  } finally {
    adding = false;
    setBusy(addButton, false);
    addButton.disabled = !canWrite();
  }
});

// ---- import: a file of orders streamed to addOrders, row by row -------------------------------

const importForm = $("import-form");
const importFile = $("import-file");
const importButton = $("import");
const importProgress = $("import-progress");
const importStatus = $("import-status");
// A file of 10 000 bad lines gets 10 000 reasons: shown a page at a time.
const importErrorList = new StreamedList($("import-errors"), (text) => Object.assign(document.createElement("li"), { textContent: text }));

// The lines of a file as it is read, never the whole file in memory.
async function* linesOf(file) {
  let rest = "";
  for await (const chunk of file.stream().pipeThrough(new TextDecoderStream())) {
    const lines = (rest + chunk).split("\n");
    rest = lines.pop();
    yield* lines;
  }
  if (rest) yield rest;
}

// One CSV line's fields: commas separate, double quotes quote ("" is a quote inside them).
function csvFields(line) {
  const fields = [];
  let field = "";
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quoted) {
      if (c === '"' && line[i + 1] === '"') { field += '"'; i++; }
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { fields.push(field); field = ""; }
    else field += c;
  }
  fields.push(field);
  return fields;
}

const CSV_COLUMNS = ["id", "items", "description", "price", "destination"];

// Lets the page draw and take input: a task of its own, without setTimeout's 4 ms clamp.
const yieldToPage = () => new Promise((resolve) => {
  const channel = new MessageChannel();
  channel.port1.onmessage = resolve;
  channel.port2.postMessage(null);
});

// The orders of a CSV or JSON-lines file, each with its line number, as the file is read. A line
// that cannot be read as an order throws, which abandons the upload: nothing is stored.
async function* ordersOf(file, lineNumbers) {
  let number = 0;
  let columns = null;
  // JSON lines when the first line is an object, else CSV with a header line.
  let json = null;
  // A file arrives in large chunks, and the client takes each order as soon as it is yielded: all
  // of one chunk's lines would otherwise be read, converted and encoded in one long task.
  let since = performance.now();
  for await (const raw of linesOf(file)) {
    if (performance.now() - since > 25) {
      await yieldToPage();
      since = performance.now();
    }
    number++;
    const line = raw.replace(/\r$/, "");
    if (!line.trim()) continue;
    let order;
    json ??= line.trimStart().startsWith("{");
    if (json) {
      try {
        order = JSON.parse(line);
      } catch (error) {
        throw new Error(`Line ${number} is not a JSON order: ${error.message}`);
      }
    } else if (!columns) {
      columns = csvFields(line).map((name) => name.trim().toLowerCase());
      const unknown = columns.filter((name) => !CSV_COLUMNS.includes(name));
      if (unknown.length) throw new Error(`Line 1 names unknown columns: ${unknown.join(", ")} (known: ${CSV_COLUMNS.join(", ")}).`);
      continue;
    } else {
      const fields = csvFields(line);
      if (fields.length !== columns.length) {
        throw new Error(`Line ${number} has ${fields.length} fields where the header names ${columns.length}.`);
      }
      const row = Object.fromEntries(columns.map((name, i) => [name, fields[i].trim()]));
      order = {
        id: row.id ?? "",
        items: (row.items ?? "").split(";").map((item) => item.trim()).filter(Boolean),
        description: row.description ?? "",
        price: row.price === undefined || row.price === "" ? NaN : Number(row.price),
        destination: row.destination ?? "",
      };
    }
    // Which line each order came from, to name it in the server's answer.
    lineNumbers.push(number);
    yield order;
  }
}

// "orders[3].price" -> "Line 5: price must not be negative."
function rowError(violation, lineNumbers) {
  const match = /^orders\[(\d+)\]\.(.+)$/.exec(violation.field);
  if (!match) return `${violation.field} ${violation.description}.`;
  const line = lineNumbers[Number(match[1])];
  return `Line ${line ?? "?"}: ${match[2]} ${violation.description}.`;
}

importForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = importFile.files[0];
  if (!client || isBusy(importButton)) return;
  importErrorList.reset();
  importStatus.hidden = true;
  importStatus.classList.remove("error");
  if (!file) {
    importStatus.textContent = "Choose a file of orders first.";
    importStatus.classList.add("error");
    importStatus.hidden = false;
    return;
  }
  setBusy(importButton, true);
  const lineNumbers = [];
  const started = performance.now();
  const showProgress = () => {
    importProgress.textContent = `Sent ${lineNumbers.length.toLocaleString("en-US")} orders…`;
  };
  showProgress();
  importProgress.hidden = false;
  const timer = setInterval(showProgress, 100);
  try {
    const summary = await client.addOrders(ordersOf(file, lineNumbers));
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    importStatus.textContent = `Imported ${file.name} in ${seconds} s: ${summary}.`;
    importForm.reset();
  } catch (error) {
    const violations = error.fieldViolations ?? [];
    // The server names the first few bad fields and counts the rest ("…; and 9990 more").
    const more = Number(/; and (\d+) more$/.exec(error.message ?? "")?.[1] ?? 0);
    importStatus.textContent = violations.length
      ? `Nothing was imported: ${violations.length === 1 && !more ? "an order is" : "orders are"} invalid.` +
        (more ? ` The first ${count(violations.length, "problem")} are listed; ${more.toLocaleString("en-US")} more were found.` : "")
      : refusal(error) ?? `Nothing was imported: ${error.message}`;
    for (const violation of violations) importErrorList.push(rowError(violation, lineNumbers));
    importErrorList.draw();
    importStatus.classList.add("error");
  } finally {
    clearInterval(timer);
    showProgress();
    importStatus.hidden = false;
    setBusy(importButton, false);
    importButton.disabled = !canWrite();
  }
});

// ---- process: IDs up, shipments down as the server completes them -------------------------------

const processForm = $("process-form");
const processButton = $("process");
const processStatus = $("process-status");
const processProgress = $("process-progress");
const shipmentList = new StreamedList($("shipments"), shipmentSummary, (list) => {
  processProgress.textContent = list.summary;
});

function shipmentSummary(shipment) {
  const li = document.createElement("li");
  const orders = shipment.ordersList;
  const destinations = [...new Set(orders.map((order) => order.destination))].join("; ");
  li.textContent = `Shipment ${shipment.id} (${shipment.status}): orders ${orders.map((order) => order.id).join(", ")} to ${destinations}`;
  return li;
}

processForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!client || isBusy(processButton)) return;
  const ids = $("process-ids").value.split(/[\s,]+/).filter(Boolean);
  shipmentList.reset();
  processStatus.classList.remove("error");
  processStatus.hidden = false;
  if (!ids.length) {
    processStatus.textContent = "Enter the IDs of the orders to process, such as 102 103 104.";
    processStatus.classList.add("error");
    return;
  }
  processStatus.textContent = "Processing…";
  setBusy(processButton, true);
  try {
    const shipments = await client.processOrders(ids, (shipment) => shipmentList.push(shipment));
    shipmentList.draw();
    processStatus.textContent = `${count(ids.length, "order")} in ${count(shipments, "shipment")}.`;
  } catch (error) {
    processStatus.textContent = refusal(error) ?? `Processing failed: ${error.message}`;
    processStatus.classList.add("error");
  } finally {
    setBusy(processButton, false);
    processButton.disabled = !canWrite();
  }
});

// Signing in: the token lives in this tab's sessionStorage (never in the URL) and goes with
// every call. Its claims are read here only to explain what it allows; the server checks it.
const TOKEN_KEY = "order-token";
const tokenForm = $("token-form");
const tokenInput = $("token");
const tokenStatus = $("token-status");
const signOut = $("sign-out");
const addReason = $("add-reason");

function claimsOf(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload.padEnd(payload.length + ((4 - (payload.length % 4)) % 4), "=")));
  } catch {
    return null;
  }
}

function canWrite() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return true; // The server may not ask for tokens; if it does, it says so.
  const scopes = String(claimsOf(token)?.scope ?? "").split(/\s+/);
  return scopes.includes("orders:write");
}

// Signs in with `token` ("" signs out). `typed`: it came from the field, which is then emptied; the
// token kept for the tab, applied once the client has loaded, leaves alone what the user is typing.
function useToken(token, typed = true) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  client?.setToken(token || null);
  const claims = token ? claimsOf(token) : null;
  if (!token) {
    tokenStatus.textContent = "Not signed in: calls carry no token.";
  } else if (!claims) {
    tokenStatus.textContent = "Signed in with a token this page cannot read; the server will judge it.";
  } else {
    const who = claims.sub ? ` as ${claims.sub}` : "";
    tokenStatus.textContent = `Signed in${who}; scopes: ${claims.scope || "none"}.`;
  }
  signOut.hidden = !token;
  if (typed) tokenInput.value = "";
  const writable = canWrite();
  addButton.disabled = !client || !writable;
  importButton.disabled = !client || !writable;
  processButton.disabled = !client || !writable;
  addReason.hidden = writable;
  addReason.textContent = writable ? "" : "Adding orders needs a token with the orders:write scope.";
}

tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  useToken(tokenInput.value.trim());
});
signOut.addEventListener("click", () => useToken(""));

async function start() {
  try {
    const wasm = await import("./pkg/order_web_client.js");
    await wasm.default();
    client = new wasm.OrderClient();
  } catch (error) {
    showError("The web client is not built. Run `make run` (or `make wasm`) and reload.");
    console.warn("loading ./pkg/order_web_client.js failed:", error);
    return;
  }
  button.disabled = false;
  $("search").disabled = false;
  $("import-mode").textContent = client.streamsUploads
    ? "This page streams the file to the server as it reads it (HTTP/2): files of any size."
    : `The file goes as one request, up to 4 MiB: ${client.unstreamedBecause}.`;
  useToken(sessionStorage.getItem(TOKEN_KEY) ?? "", false);
  const id = new URLSearchParams(location.search).get("id");
  if (id) {
    input.value = id;
    await lookup(id);
  }
}

start();
