//! Validation at the boundary: an [`Order`] from a client becomes a [`ValidOrder`] only if every
//! field is acceptable, and every bad field is reported, not just the first.

use order_api::pb::Order;

use crate::error::{Error, FieldViolation};

/// Longest order ID, in characters.
pub const MAX_ID_CHARS: usize = 64;
/// Most items in one order.
pub const MAX_ITEMS: usize = 100;
/// Longest item name, in characters.
pub const MAX_ITEM_CHARS: usize = 200;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 2_000;
/// Longest destination, in characters.
pub const MAX_DESTINATION_CHARS: usize = 200;

/// An order whose fields all passed validation. The ID may still be empty (for `addOrder`, where
/// the server assigns one).
#[derive(Debug, Clone, PartialEq)]
pub struct ValidOrder(Order);

impl ValidOrder {
    /// The order's ID, possibly empty.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The validated order, with its ID set to `id`.
    pub fn with_id(mut self, id: String) -> Self {
        self.0.id = id;
        self
    }

    /// The order itself.
    pub fn into_inner(self) -> Order {
        self.0
    }

    /// Validates an order that replaces an existing one: as for a new order, and the ID is
    /// required.
    pub fn existing(order: Order) -> Result<Self, Error> {
        Self::validate(order, true)
    }

    fn validate(order: Order, require_id: bool) -> Result<Self, Error> {
        let mut violations = violations(&order);
        if require_id && order.id.is_empty() {
            violations.insert(
                0,
                FieldViolation {
                    field: "id".into(),
                    description: "is required to update an order".into(),
                },
            );
        }
        if violations.is_empty() {
            Ok(ValidOrder(order))
        } else {
            Err(Error::InvalidOrder {
                id: order.id,
                violations,
            })
        }
    }
}

impl TryFrom<Order> for ValidOrder {
    type Error = Error;

    /// Validates a new order; its ID may be empty.
    fn try_from(order: Order) -> Result<Self, Error> {
        Self::validate(order, false)
    }
}

fn too_long(value: &str, max: usize) -> bool {
    value.chars().nth(max).is_some()
}

fn blank(value: &str) -> bool {
    value.trim().is_empty()
}

/// Control characters (newlines, escapes, NUL…) have no place in an order, and in a log line they
/// could forge another line.
fn has_control(value: &str) -> bool {
    value.chars().any(char::is_control)
}

const NO_CONTROL: &str = "must not have control characters (such as line breaks)";

/// Every rule an order breaks, one violation per bad field.
fn violations(order: &Order) -> Vec<FieldViolation> {
    let mut found = Vec::new();
    let mut violate =
        |field: String, description: String| found.push(FieldViolation { field, description });

    if too_long(&order.id, MAX_ID_CHARS) {
        violate(
            "id".into(),
            format!("must be at most {MAX_ID_CHARS} characters"),
        );
    } else if order.id.chars().any(char::is_control) || order.id.trim() != order.id {
        violate(
            "id".into(),
            "must not have control characters or leading or trailing spaces".into(),
        );
    }

    if order.items.is_empty() {
        violate("items".into(), "an order needs at least one item".into());
    } else if order.items.len() > MAX_ITEMS {
        violate(
            "items".into(),
            format!("at most {MAX_ITEMS} items per order"),
        );
    }
    for (index, item) in order.items.iter().enumerate().take(MAX_ITEMS) {
        if blank(item) {
            violate(format!("items[{index}]"), "must not be empty".into());
        } else if has_control(item) {
            violate(format!("items[{index}]"), NO_CONTROL.into());
        } else if too_long(item, MAX_ITEM_CHARS) {
            violate(
                format!("items[{index}]"),
                format!("must be at most {MAX_ITEM_CHARS} characters"),
            );
        }
    }

    if too_long(&order.description, MAX_DESCRIPTION_CHARS) {
        violate(
            "description".into(),
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        );
    } else if order
        .description
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        // A description may have lines; the log never shows it.
        violate(
            "description".into(),
            "must not have control characters other than line breaks and tabs".into(),
        );
    }

    if !order.price.is_finite() {
        violate("price".into(), "must be a finite number".into());
    } else if order.price < 0.0 {
        violate("price".into(), "must not be negative".into());
    }

    if blank(&order.destination) {
        violate("destination".into(), "must not be empty".into());
    } else if has_control(&order.destination) {
        violate("destination".into(), NO_CONTROL.into());
    } else if too_long(&order.destination, MAX_DESTINATION_CHARS) {
        violate(
            "destination".into(),
            format!("must be at most {MAX_DESTINATION_CHARS} characters"),
        );
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Order {
        Order {
            id: String::new(),
            items: vec!["Pixel 9".into()],
            description: "a phone".into(),
            price: 499.0,
            destination: "Seattle, WA".into(),
        }
    }

    fn fields(order: Order) -> Vec<String> {
        match ValidOrder::try_from(order) {
            Ok(_) => Vec::new(),
            Err(Error::InvalidOrder { violations, .. }) => {
                violations.into_iter().map(|v| v.field).collect()
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_good_order_passes() {
        assert!(ValidOrder::try_from(good()).is_ok());
        assert!(ValidOrder::try_from(Order {
            price: 0.0,
            ..good()
        })
        .is_ok());
    }

    #[test]
    fn every_bad_field_is_reported_once() {
        let order = Order {
            id: "x".repeat(MAX_ID_CHARS + 1),
            items: vec!["ok".into(), " ".into(), "y".repeat(MAX_ITEM_CHARS + 1)],
            description: "d".repeat(MAX_DESCRIPTION_CHARS + 1),
            price: -1.0,
            destination: String::new(),
        };
        assert_eq!(
            fields(order),
            [
                "id",
                "items[1]",
                "items[2]",
                "description",
                "price",
                "destination"
            ]
        );
    }

    #[test]
    fn no_items_and_odd_prices_are_invalid() {
        assert_eq!(
            fields(Order {
                items: vec![],
                ..good()
            }),
            ["items"]
        );
        for price in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.01] {
            assert_eq!(fields(Order { price, ..good() }), ["price"], "{price}");
        }
    }

    #[test]
    fn an_update_needs_an_id() {
        let err = ValidOrder::existing(good()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidOrder { violations, .. } if violations[0].field == "id")
        );
        assert!(ValidOrder::existing(Order {
            id: "102".into(),
            ..good()
        })
        .is_ok());
    }

    #[test]
    fn control_characters_are_refused_in_every_text_field() {
        let forged = "Austin, TX\n2026-12-01T00:00:00Z  INFO order added id=\"999\"";
        assert_eq!(
            fields(Order {
                destination: forged.into(),
                ..good()
            }),
            ["destination"]
        );
        assert_eq!(
            fields(Order {
                items: vec!["ok".into(), "bad\u{1b}[31m".into()],
                ..good()
            }),
            ["items[1]"]
        );
        assert_eq!(
            fields(Order {
                description: "nul\0".into(),
                ..good()
            }),
            ["description"]
        );
        // Line breaks are fine in a description, which is never logged.
        assert!(fields(Order {
            description: "line one\nline two".into(),
            ..good()
        })
        .is_empty());
    }

    #[test]
    fn limits_count_characters_not_bytes() {
        let item = "é".repeat(MAX_ITEM_CHARS);
        assert!(ValidOrder::try_from(Order {
            items: vec![item],
            ..good()
        })
        .is_ok());
    }
}
