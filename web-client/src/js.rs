//! Conversions between the generated messages and the plain JavaScript values the page sees.

use js_sys::{Array, Error, Object, Reflect};
use order_api::pb::{CombinedShipment, Order};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use wasm_bindgen::JsValue;

fn set(object: &Object, key: &str, value: impl Into<JsValue>) {
    // Setting a property on a fresh plain object cannot fail.
    let _ = Reflect::set(object, &JsValue::from_str(key), &value.into());
}

/// `{ id, items, description, price, destination }`.
pub fn order_to_js(order: &Order) -> JsValue {
    let object = Object::new();
    set(&object, "id", order.id.as_str());
    let items: Array = order
        .items
        .iter()
        .map(|item| JsValue::from_str(item))
        .collect();
    set(&object, "items", items);
    set(&object, "description", order.description.as_str());
    set(&object, "price", f64::from(order.price));
    set(&object, "destination", order.destination.as_str());
    object.into()
}

/// `{ id, status, ordersList }`, its orders as [`order_to_js`] makes them.
pub fn shipment_to_js(shipment: &CombinedShipment) -> JsValue {
    let object = Object::new();
    set(&object, "id", shipment.id.as_str());
    set(&object, "status", shipment.status.as_str());
    let orders: Array = shipment.orders_list.iter().map(order_to_js).collect();
    set(&object, "ordersList", orders);
    object.into()
}

fn get(object: &JsValue, key: &str) -> JsValue {
    Reflect::get(object, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

fn string_field(object: &JsValue, key: &str) -> String {
    get(object, key).as_string().unwrap_or_default()
}

/// An order from a plain object `{ id?, items, description?, price, destination }`.
///
/// The conversion is lenient on purpose and leaves judging to the server, which reports every bad
/// field at once: a missing or non-string field becomes empty, a price that is not a number
/// becomes NaN.
/// `what` names the value in the error for a value that is not an object.
pub fn order_from_js(value: &JsValue, what: &str) -> Result<Order, JsValue> {
    if !value.is_object() {
        return Err(Error::new(&format!("{what} must be an order object")).into());
    }
    let items = get(value, "items");
    let items = if Array::is_array(&items) {
        Array::from(&items)
            .iter()
            .map(|item| item.as_string().unwrap_or_default())
            .collect()
    } else {
        Vec::new()
    };
    Ok(Order {
        id: string_field(value, "id"),
        items,
        description: string_field(value, "description"),
        price: get(value, "price").as_f64().unwrap_or(f64::NAN) as f32,
        destination: string_field(value, "destination"),
    })
}

/// An `Error` with a readable `message`, the gRPC `code` and its `codeName`, and
/// `fieldViolations` (`[{ field, description }]`) when the server sent `google.rpc.BadRequest`.
pub fn status_to_error(status: &Status, base_url: &str) -> JsValue {
    let (code, message) = if is_transport_failure(status) {
        // fetch() itself failed: nothing answered at that address (or CORS refused the page).
        (
            Code::Unavailable,
            format!("cannot reach the order service at {base_url}"),
        )
    } else if status.message().is_empty() {
        (status.code(), status.code().description().to_owned())
    } else {
        (status.code(), status.message().to_owned())
    };
    let error = Error::new(&message);
    set(&error, "code", code as i32);
    set(&error, "codeName", format!("{code:?}"));
    if let Some(bad_request) = status.get_details_bad_request() {
        let violations: Array = bad_request
            .field_violations
            .iter()
            .map(|violation| {
                let object = Object::new();
                set(&object, "field", violation.field.as_str());
                set(&object, "description", violation.description.as_str());
                JsValue::from(object)
            })
            .collect();
        set(&error, "fieldViolations", violations);
    }
    error.into()
}

/// True when the call never got an HTTP answer: the transport's own error, not a gRPC status.
fn is_transport_failure(status: &Status) -> bool {
    status.code() == Code::Unknown
        && std::error::Error::source(status)
            .and_then(|source| source.downcast_ref::<tonic_web_wasm_client::Error>())
            .is_some_and(|error| matches!(error, tonic_web_wasm_client::Error::JsError(_)))
}
