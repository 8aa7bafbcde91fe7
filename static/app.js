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
  button.disabled = true;
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
      button.disabled = false;
      form.removeAttribute("aria-busy");
    }
  }
  const url = new URL(location.href);
  url.searchParams.set("id", id);
  history.replaceState(null, "", url);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (client) lookup(input.value);
});

// ---- search: results are shown as the server streams them -------------------------------------

const searchForm = $("search-form");
const searchButton = $("search");
const searchResults = $("search-results");
const searchStatus = $("search-status");

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
  const details = document.createElement("span");
  details.textContent = ` ${order.items.join(", ")} to ${order.destination}, ${money.format(order.price)}`;
  li.append(link, details);
  return li;
}

searchForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!client) return;
  const text = $("search-text").value.trim();
  searchResults.replaceChildren();
  searchStatus.classList.remove("error");
  searchStatus.textContent = "Searching…";
  searchStatus.hidden = false;
  searchButton.disabled = true;
  try {
    const count = await client.searchOrders(text, (order) => searchResults.append(orderSummary(order)));
    const what = text ? `with an item containing “${text}”` : "in all";
    searchStatus.textContent = count === 0 ? `No order has an item containing “${text}”.` : `${count} order${count === 1 ? "" : "s"} ${what}.`;
  } catch (error) {
    searchStatus.textContent = refusal(error) ?? `The search failed: ${error.message}`;
    searchStatus.classList.add("error");
  } finally {
    searchButton.disabled = false;
  }
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

addForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!client) return;
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
  addButton.disabled = true;
  try {
    const id = await client.addOrder(order);
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
    } else {
      addStatus.textContent = refusal(error) ?? `The order was not added: ${error.message}`;
    }
    addStatus.classList.add("error");
    addStatus.hidden = false;
  } finally {
    addButton.disabled = !canWrite();
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

function useToken(token) {
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
  tokenInput.value = "";
  const writable = canWrite();
  addButton.disabled = !client || !writable;
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
  searchButton.disabled = false;
  useToken(sessionStorage.getItem(TOKEN_KEY) ?? "");
  const id = new URLSearchParams(location.search).get("id");
  if (id) {
    input.value = id;
    await lookup(id);
  }
}

start();
