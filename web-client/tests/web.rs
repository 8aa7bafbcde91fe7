//! `wasm-pack test --headless --chrome`: the web client in a real browser against a live
//! `order-server`. `make test-wasm` starts the server and passes its address in at build time.
#![cfg(target_arch = "wasm32")]

use js_sys::Reflect;
use order_web_client::OrderClient;
use wasm_bindgen::{prelude::wasm_bindgen, JsCast, JsValue};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// The live server `make test-wasm` started.
const SERVER: &str = match option_env!("ORDER_SERVER_URL") {
    Some(url) => url,
    None => "http://127.0.0.1:50051",
};

/// A live server that checks tokens, and tokens for it (`make test-wasm` makes them with
/// `order-server token`).
const AUTH_SERVER: &str = match option_env!("ORDER_AUTH_SERVER_URL") {
    Some(url) => url,
    None => "http://127.0.0.1:50052",
};
const READ_TOKEN: &str = match option_env!("ORDER_READ_TOKEN") {
    Some(token) => token,
    None => "",
};
const WRITE_TOKEN: &str = match option_env!("ORDER_WRITE_TOKEN") {
    Some(token) => token,
    None => "",
};

/// An address where nothing listens.
const UNREACHABLE: &str = match option_env!("ORDER_UNREACHABLE_URL") {
    Some(url) => url,
    None => "http://127.0.0.1:9",
};

fn get(value: &JsValue, key: &str) -> JsValue {
    Reflect::get(value, &JsValue::from_str(key)).expect("a property")
}

fn client(url: &str) -> OrderClient {
    OrderClient::new(Some(url.to_owned()), Some(5_000), None).expect("a client")
}

/// The rejection of a call, as the page's JavaScript sees it.
async fn rejection(result: Result<JsValue, JsValue>) -> js_sys::Error {
    result
        .expect_err("the call should fail")
        .dyn_into::<js_sys::Error>()
        .expect("rejects with an Error")
}

#[wasm_bindgen_test]
async fn get_order_106_resolves_to_a_plain_object() {
    let order = client(SERVER).get_order("106".into()).await.expect("106");
    assert_eq!(get(&order, "id"), "106");
    let items: Vec<String> = js_sys::Array::from(&get(&order, "items"))
        .iter()
        .map(|item| item.as_string().unwrap())
        .collect();
    assert_eq!(items, ["Amazon Echo", "Apple iPhone XS"]);
    assert_eq!(get(&order, "price").as_f64(), Some(300.0));
    assert_eq!(get(&order, "destination"), "Mountain View, CA");
    assert_eq!(get(&order, "description"), "");
}

#[wasm_bindgen_test]
async fn unknown_order_rejects_with_not_found_and_its_code() {
    let error = rejection(client(SERVER).get_order("999".into()).await).await;
    assert_eq!(get(&error, "code").as_f64(), Some(5.0));
    assert_eq!(get(&error, "codeName"), "NotFound");
    let message = String::from(error.message());
    assert!(message.contains("not found"), "{message}");
    assert!(message.contains("999"), "{message}");
}

#[wasm_bindgen_test]
async fn empty_id_rejects_with_invalid_argument() {
    let error = rejection(client(SERVER).get_order(String::new()).await).await;
    assert_eq!(get(&error, "codeName"), "InvalidArgument");
}

#[wasm_bindgen_test]
async fn unreachable_server_rejects_with_unavailable() {
    let error = rejection(client(UNREACHABLE).get_order("106".into()).await).await;
    assert_eq!(get(&error, "codeName"), "Unavailable");
    assert_eq!(get(&error, "code").as_f64(), Some(14.0));
    let message = String::from(error.message());
    assert!(message.contains("cannot reach"), "{message}");
}

#[wasm_bindgen_test]
async fn calls_can_overlap() {
    let client = client(SERVER);
    let (a, b) = futures::join!(
        client.get_order("102".into()),
        client.get_order("105".into())
    );
    assert_eq!(get(&a.expect("102"), "id"), "102");
    assert_eq!(get(&b.expect("105"), "id"), "105");
}

#[wasm_bindgen_test]
async fn search_orders_streams_each_match_to_the_callback() {
    let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::<String>::new()));
    let record = {
        let seen = seen.clone();
        wasm_bindgen::closure::Closure::<dyn FnMut(JsValue)>::new(move |order: JsValue| {
            seen.borrow_mut()
                .push(get(&order, "id").as_string().unwrap());
        })
    };
    let count = client(SERVER)
        .search_orders(
            "google".into(),
            record.as_ref().unchecked_ref::<js_sys::Function>().clone(),
            None,
        )
        .await
        .expect("search");
    assert_eq!(count, 2);
    assert_eq!(*seen.borrow(), ["102", "104"]);

    let none = client(SERVER)
        .search_orders(
            "no such item".into(),
            record.as_ref().unchecked_ref::<js_sys::Function>().clone(),
            None,
        )
        .await
        .expect("an empty search is not an error");
    assert_eq!(none, 0);
}

#[wasm_bindgen_test]
async fn a_search_stops_when_its_signal_aborts() {
    let controller = web_sys::AbortController::new().expect("an AbortController");
    let seen = std::rc::Rc::new(std::cell::Cell::new(0));
    // Every order matches ""; the first one aborts the search.
    let abort_on_first = {
        let (seen, controller) = (seen.clone(), controller.clone());
        wasm_bindgen::closure::Closure::<dyn FnMut(JsValue)>::new(move |_: JsValue| {
            seen.set(seen.get() + 1);
            controller.abort();
        })
    };
    let client = client(SERVER);
    let search = || {
        client.search_orders(
            String::new(),
            abort_on_first
                .as_ref()
                .unchecked_ref::<js_sys::Function>()
                .clone(),
            Some(controller.signal()),
        )
    };
    let error = search().await.expect_err("an aborted search rejects");
    assert_eq!(
        get(&error, "name"),
        "AbortError",
        "rejects with the signal's reason"
    );
    assert_eq!(seen.get(), 1, "no order after the abort");

    // A signal aborted already: no call, no order.
    let error = search().await.expect_err("an aborted search rejects");
    assert_eq!(get(&error, "name"), "AbortError");
    assert_eq!(seen.get(), 1);
}

fn plain_order(items: &[&str], price: f64, destination: &str) -> JsValue {
    let order = js_sys::Object::new();
    let items: js_sys::Array = items.iter().map(|&i| JsValue::from_str(i)).collect();
    Reflect::set(&order, &"items".into(), &items).unwrap();
    Reflect::set(&order, &"price".into(), &price.into()).unwrap();
    Reflect::set(&order, &"destination".into(), &destination.into()).unwrap();
    order.into()
}

#[wasm_bindgen_test]
async fn add_order_resolves_to_the_new_id() {
    let client = client(SERVER);
    let id = client
        .add_order(plain_order(&["Wasm mug"], 12.5, "Portland, OR"), None)
        .await
        .expect("added");
    let stored = client.get_order(id.clone()).await.expect("stored");
    assert_eq!(get(&stored, "id").as_string(), Some(id));
    assert_eq!(get(&stored, "destination"), "Portland, OR");
}

#[wasm_bindgen_test]
async fn the_same_idempotency_key_gets_the_first_answer() {
    let client = client(SERVER);
    let key = format!("wasm-{}", js_sys::Math::random());
    let order = || plain_order(&["Wasm keyed mug"], 9.0, "Portland, OR");
    let first = client
        .add_order(order(), Some(key.clone()))
        .await
        .expect("added");
    let again = client
        .add_order(order(), Some(key.clone()))
        .await
        .expect("answered");
    assert_eq!(first, again, "a second order was stored");
    let other = rejection(
        client
            .add_order(plain_order(&["Other"], 1.0, "Reno, NV"), Some(key))
            .await
            .map(JsValue::from),
    )
    .await;
    assert_eq!(get(&other, "codeName"), "FailedPrecondition");

    let key = format!("wasm-batch-{}", js_sys::Math::random());
    let batch = || {
        let orders = js_sys::Array::new();
        orders.push(&plain_order(&["Wasm keyed batch"], 2.0, "Reno, NV"));
        JsValue::from(orders)
    };
    let added = client
        .add_orders(batch(), Some(key.clone()))
        .await
        .expect("added");
    let replayed = client
        .add_orders(batch(), Some(key))
        .await
        .expect("answered");
    assert_eq!(added, replayed);
}

#[wasm_bindgen_test]
async fn a_rejected_add_exposes_its_field_violations() {
    let bad = plain_order(&["ok", ""], -3.0, "");
    let error = rejection(client(SERVER).add_order(bad, None).await.map(JsValue::from)).await;
    assert_eq!(get(&error, "codeName"), "InvalidArgument");
    assert_eq!(get(&error, "code").as_f64(), Some(3.0));
    let fields: Vec<String> = js_sys::Array::from(&get(&error, "fieldViolations"))
        .iter()
        .map(|v| get(&v, "field").as_string().unwrap())
        .collect();
    assert_eq!(fields, ["items[1]", "price", "destination"]);
    let first = js_sys::Array::from(&get(&error, "fieldViolations")).get(0);
    assert_eq!(get(&first, "description"), "must not be empty");
}

#[wasm_bindgen_test]
async fn a_token_is_sent_with_every_call_and_refusals_say_why() {
    let anonymous = client(AUTH_SERVER);
    let refused = rejection(anonymous.get_order("106".into()).await).await;
    assert_eq!(get(&refused, "codeName"), "Unauthenticated");
    assert!(String::from(refused.message()).contains("no token"));

    let reader = OrderClient::new(
        Some(AUTH_SERVER.to_owned()),
        Some(5_000),
        Some(READ_TOKEN.into()),
    )
    .expect("a client");
    let order = reader
        .get_order("106".into())
        .await
        .expect("read with a read token");
    assert_eq!(get(&order, "id"), "106");
    let new_order =
        js_sys::JSON::parse(r#"{"items":["Lamp"],"price":20,"destination":"Denver, CO"}"#).unwrap();
    let denied = rejection(
        reader
            .add_order(new_order.clone(), None)
            .await
            .map(JsValue::from),
    )
    .await;
    assert_eq!(get(&denied, "codeName"), "PermissionDenied");
    assert!(String::from(denied.message()).contains("orders:write"));

    reader.set_token(Some(WRITE_TOKEN.into())).unwrap();
    let id = reader
        .add_order(new_order, None)
        .await
        .expect("write with a write token");
    assert!(!id.is_empty());
}

// ---- client streams ----------------------------------------------------------------------------

/// A live server over TLS (`https://`), where the browser streams uploads over HTTP/2.
const TLS_SERVER: &str = match option_env!("ORDER_TLS_SERVER_URL") {
    Some(url) => url,
    None => "https://127.0.0.1:50053",
};

#[wasm_bindgen(inline_js = r#"
export function generated_orders(count, item) {
  return (async function* () {
    for (let i = 0; i < count; i++) {
      await null;
      yield { items: [`${item} ${i}`], price: 1, destination: "Reno, NV" };
    }
  })();
}
export function failing_orders(item) {
  return (async function* () {
    yield { items: [`${item} 0`], price: 1, destination: "Reno, NV" };
    yield { items: [`${item} 1`], price: 1, destination: "Reno, NV" };
    throw new Error("the file could not be read");
  })();
}
export function large_orders(count, item) {
  return (function* () {
    for (let i = 0; i < count; i++) {
      yield { items: [`${item} ${i}`], description: "d".repeat(2000), price: 1, destination: "Reno, NV" };
    }
  })();
}
"#)]
extern "C" {
    /// An async iterable of `count` new orders, items `"<item> <n>"`, each after a microtask.
    fn generated_orders(count: u32, item: &str) -> JsValue;
    /// An async iterable that yields two orders and then throws.
    fn failing_orders(item: &str) -> JsValue;
    /// An iterable of `count` orders of about 2 KB each.
    fn large_orders(count: u32, item: &str) -> JsValue;
}

fn array(values: &[JsValue]) -> JsValue {
    values.iter().collect::<js_sys::Array>().into()
}

/// How many orders have an item containing `text`.
async fn count_matching(client: &OrderClient, text: &str) -> u32 {
    let ignore = wasm_bindgen::closure::Closure::<dyn FnMut(JsValue)>::new(|_: JsValue| {});
    client
        .search_orders(
            text.into(),
            ignore.as_ref().unchecked_ref::<js_sys::Function>().clone(),
            None,
        )
        .await
        .expect("search")
}

#[wasm_bindgen_test]
async fn update_orders_is_all_or_nothing_and_names_the_bad_order() {
    let client = client(SERVER);
    let kept = client.get_order("105".into()).await.expect("105");
    let bad = plain_order(&["Amazon Echo"], -1.0, "San Jose, CA");
    Reflect::set(&bad, &"id".into(), &"103".into()).unwrap();
    let error = rejection(
        client
            .update_orders(array(&[kept.clone(), bad]), None)
            .await
            .map(JsValue::from),
    )
    .await;
    assert_eq!(get(&error, "codeName"), "InvalidArgument");
    let first = js_sys::Array::from(&get(&error, "fieldViolations")).get(0);
    assert_eq!(get(&first, "field"), "orders[1].price");

    // The same order as it is: a valid update, resolving to the server's summary.
    let summary = client
        .update_orders(array(&[kept]), None)
        .await
        .expect("updated");
    assert_eq!(summary, "updated 1 order: 105");
    let unknown = plain_order(&["Ghost"], 1.0, "Nowhere, NV");
    Reflect::set(&unknown, &"id".into(), &"no-such-order".into()).unwrap();
    let error = rejection(
        client
            .update_orders(array(&[unknown]), None)
            .await
            .map(JsValue::from),
    )
    .await;
    assert_eq!(get(&error, "codeName"), "NotFound");
}

#[wasm_bindgen_test]
async fn process_orders_streams_shipments_to_the_callback() {
    let shipped = std::rc::Rc::new(std::cell::RefCell::new(Vec::<String>::new()));
    let record = {
        let shipped = shipped.clone();
        wasm_bindgen::closure::Closure::<dyn FnMut(JsValue)>::new(move |shipment: JsValue| {
            assert!(get(&shipment, "id")
                .as_string()
                .is_some_and(|id| !id.is_empty()));
            for order in js_sys::Array::from(&get(&shipment, "ordersList")).iter() {
                shipped
                    .borrow_mut()
                    .push(get(&order, "id").as_string().unwrap());
            }
        })
    };
    let ids = array(&["102".into(), "103".into(), "104".into()]);
    let count = client(SERVER)
        .process_orders(
            ids,
            record.as_ref().unchecked_ref::<js_sys::Function>().clone(),
        )
        .await
        .expect("processed");
    assert!(
        count >= 2,
        "102 and 104 go to Mountain View, 103 to San Jose: {count} shipments"
    );
    let mut ids = shipped.borrow().clone();
    ids.sort();
    assert_eq!(ids, ["102", "103", "104"]);

    let error = rejection(
        client(SERVER)
            .process_orders(array(&[102.into()]), js_sys::Function::new_no_args(""))
            .await
            .map(JsValue::from),
    )
    .await;
    assert!(String::from(error.message()).contains("must be strings"));
}

#[wasm_bindgen_test]
async fn over_https_uploads_stream_from_an_async_iterable() {
    let client = client(TLS_SERVER);
    assert!(
        client.streams_uploads(),
        "Chromium streams uploads to an https:// server"
    );
    let summary = client
        .add_orders(generated_orders(300, "wasm streamed"), None)
        .await
        .expect("added");
    assert!(summary.starts_with("added 300 orders: "), "{summary}");
    assert_eq!(count_matching(&client, "wasm streamed").await, 300);

    // Larger than one buffered request may be: streamed, it is just an upload.
    let summary = client
        .add_orders(large_orders(2_500, "wasm large streamed"), None)
        .await
        .expect("a 5 MB upload streams");
    assert!(summary.starts_with("added 2500 orders"), "{summary}");
}

#[wasm_bindgen_test]
async fn a_streamed_upload_the_server_refuses_early_rejects_with_the_servers_reason() {
    // The server answers at the first order (an unknown ID) while the page still sends the rest.
    let client = client(TLS_SERVER);
    let unknown = plain_order(&["Ghost"], 1.0, "Nowhere, NV");
    Reflect::set(&unknown, &"id".into(), &"no-such-order".into()).unwrap();
    let rest = js_sys::Array::from(&large_orders(2_000, "wasm refused early"));
    for (n, order) in rest.iter().enumerate() {
        Reflect::set(&order, &"id".into(), &format!("R-{n}").into()).unwrap();
    }
    rest.unshift(&unknown);
    let error = rejection(
        client
            .update_orders(rest.into(), None)
            .await
            .map(JsValue::from),
    )
    .await;
    assert_eq!(
        get(&error, "codeName"),
        "NotFound",
        "{:?}",
        String::from(error.message())
    );
    assert!(String::from(error.message()).contains("no-such-order"));
}

#[wasm_bindgen_test]
async fn a_source_that_fails_mid_upload_rejects_and_stores_nothing() {
    // Every promise rejection the page leaves unhandled.
    let unhandled = std::rc::Rc::new(std::cell::RefCell::new(Vec::<String>::new()));
    let listener = wasm_bindgen::closure::Closure::<dyn Fn(JsValue)>::new({
        let unhandled = unhandled.clone();
        move |event: JsValue| {
            let reason = Reflect::get(&event, &"reason".into()).unwrap_or_default();
            let message = Reflect::get(&reason, &"message".into()).unwrap_or_default();
            unhandled
                .borrow_mut()
                .push(message.as_string().unwrap_or_else(|| format!("{reason:?}")));
        }
    });
    let window = web_sys::window().expect("a page");
    window
        .add_event_listener_with_callback("unhandledrejection", listener.as_ref().unchecked_ref())
        .unwrap();
    for server in [TLS_SERVER, SERVER] {
        let client = client(server);
        let error = client
            .add_orders(failing_orders("wasm failing"), None)
            .await
            .expect_err("the source threw");
        let error: js_sys::Error = error.dyn_into().expect("the source's Error");
        assert_eq!(String::from(error.message()), "the file could not be read");
        // Another round trip: a rejection left unhandled has been reported by then.
        assert_eq!(count_matching(&client, "wasm failing").await, 0, "{server}");
    }
    window
        .remove_event_listener_with_callback(
            "unhandledrejection",
            listener.as_ref().unchecked_ref(),
        )
        .unwrap();
    assert!(
        unhandled.borrow().is_empty(),
        "left unhandled in the page: {:?}",
        unhandled.borrow()
    );
}

#[wasm_bindgen_test]
async fn over_http_small_uploads_are_sent_whole_and_large_ones_refused_with_the_reason() {
    let client = client(SERVER);
    assert!(
        !client.streams_uploads(),
        "no streamed uploads over http://"
    );
    let summary = client
        .add_orders(generated_orders(3, "wasm buffered"), None)
        .await
        .expect("a small upload goes as one request");
    assert!(summary.starts_with("added 3 orders"), "{summary}");

    let error = rejection(
        client
            .add_orders(large_orders(2_500, "wasm too large"), None)
            .await
            .map(JsValue::from),
    )
    .await;
    assert_eq!(get(&error, "codeName"), "Unimplemented");
    let message = String::from(error.message());
    assert!(
        message.contains("4 MiB") && message.contains("--tls-cert"),
        "{message}"
    );
    assert_eq!(count_matching(&client, "wasm too large").await, 0);

    let error = rejection(
        client
            .add_orders("not orders".into(), None)
            .await
            .map(JsValue::from),
    )
    .await;
    assert!(String::from(error.message()).contains("must be an array, an iterable"));
}
