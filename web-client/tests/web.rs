//! `wasm-pack test --headless --chrome`: the web client in a real browser against a live
//! `order-server`. `make test-wasm` starts the server and passes its address in at build time.
#![cfg(target_arch = "wasm32")]

use js_sys::Reflect;
use order_web_client::OrderClient;
use wasm_bindgen::{JsCast, JsValue};
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
        )
        .await
        .expect("search");
    assert_eq!(count, 2);
    assert_eq!(*seen.borrow(), ["102", "104"]);

    let none = client(SERVER)
        .search_orders(
            "no such item".into(),
            record.as_ref().unchecked_ref::<js_sys::Function>().clone(),
        )
        .await
        .expect("an empty search is not an error");
    assert_eq!(none, 0);
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
        .add_order(plain_order(&["Wasm mug"], 12.5, "Portland, OR"))
        .await
        .expect("added");
    let stored = client.get_order(id.clone()).await.expect("stored");
    assert_eq!(get(&stored, "id").as_string(), Some(id));
    assert_eq!(get(&stored, "destination"), "Portland, OR");
}

#[wasm_bindgen_test]
async fn a_rejected_add_exposes_its_field_violations() {
    let bad = plain_order(&["ok", ""], -3.0, "");
    let error = rejection(client(SERVER).add_order(bad).await.map(JsValue::from)).await;
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
    let denied = rejection(reader.add_order(new_order.clone()).await.map(JsValue::from)).await;
    assert_eq!(get(&denied, "codeName"), "PermissionDenied");
    assert!(String::from(denied.message()).contains("orders:write"));

    reader.set_token(Some(WRITE_TOKEN.into())).unwrap();
    let id = reader
        .add_order(new_order)
        .await
        .expect("write with a write token");
    assert!(!id.is_empty());
}
