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

// A sentence for a person, from the client's Error (which carries the gRPC code name).
function describe(error, id) {
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
  const id = new URLSearchParams(location.search).get("id");
  if (id) {
    input.value = id;
    await lookup(id);
  }
}

start();
