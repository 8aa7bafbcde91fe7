//! What a search looks for, and how both engines find it without reading every order.
//!
//! **Matching.** An order matches when one of its items contains the search text, both
//! [`fold`]ed: Unicode full case folding (`Straße` = `STRASSE`, `ΣΑΣ` = `σας`), then NFC (a
//! precomposed `é` = `e` + combining acute), then the dot of a dotted capital I dropped (`İstanbul`
//! = `istanbul`). Folding happens in Rust, the same on SQLite and PostgreSQL, whose own `lower()`
//! differ (ASCII only; the database's locale).
//!
//! **The index.** Every write stores the folded items, joined by newlines, in the order's
//! `search_text` column, in the write's own transaction; SQLite indexes it with FTS5's trigram
//! tokenizer, PostgreSQL with `pg_trgm`'s GIN operator class. The index only narrows the
//! candidates: every candidate is checked against the folded text again, in SQL (a plain
//! substring test, so `%`, `_` and `\` are literal) and then per item in Rust (a match across two
//! items' boundary is not a match).
//!
//! **SQLite's tail.** FTS5 writes a new segment of its index for every transaction that adds to
//! it, which made a commit of one order write 10 pages instead of 4. So the newest orders (fewer
//! than the `merge_at` of the `search_tail` table, 1 024 by default) wait in a tail, and an index
//! search reads them directly beside what the index finds. The insert that fills the tail moves
//! it into the index, in its own transaction: triggers keep both right in every write's
//! transaction. PostgreSQL's GIN index has its own pending list to the same end.
//!
//! **Two ways to read a page**, in ID order whatever the store's size:
//! - [`Plan::Walk`] reads the ID index from where the last page ended and tests each order,
//!   stopping after a page of matches or [`WALK_ROWS`] orders: quick for a term that most orders
//!   have (the first result of a common term is near the start), and the only way for terms
//!   shorter than a trigram.
//! - [`Plan::Index`] asks the trigram index for the candidates after the cursor and sorts only
//!   those: quick for a rare term or none, whose walk would read the whole store.
//!
//! A search starts walking and switches to the index for good once a window of [`WALK_ROWS`] did
//! not fill a page (fewer than one order in 64 matched there). A page's cost is then bounded by
//! [`WALK_ROWS`] for a term that dense, by the number of matches for a rarer one.

use caseless::Caseless;
use order_api::pb::Order;
use unicode_normalization::UnicodeNormalization;

/// Most orders a walking page tests before the search turns to the index.
pub(super) const WALK_ROWS: i64 = 4096;

/// Characters a trigram has: a shorter search text cannot use the index.
const TRIGRAM: usize = 3;

/// Most trigrams of the search text put to the index (spread over it): a long text's every
/// trigram would only make the index intersect more lists, the final check does the rest.
const MAX_TRIGRAMS: usize = 12;

/// `text` as search compares it: full case folding, NFC, and no combining dot after `i`/`j`.
pub fn fold(text: &str) -> String {
    // ASCII folds to its lowercase and is NFC already: most text, a hundred times quicker.
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    let mut folded = String::with_capacity(text.len());
    for c in text.chars().default_case_fold().nfc() {
        if c == '\u{307}' && matches!(folded.chars().next_back(), Some('i' | 'j')) {
            continue;
        }
        folded.push(c);
    }
    folded
}

/// The `search_text` column of an order with these items.
pub(super) fn search_text(items: &[String]) -> String {
    let mut text = String::new();
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            text.push('\n');
        }
        text.push_str(&fold(item));
    }
    text
}

/// How a search reads its next page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan {
    /// Every order, in ID order (an empty search text).
    All,
    /// The ID index from the cursor, each order tested, at most [`WALK_ROWS`] of them.
    Walk,
    /// The trigram index's candidates after the cursor.
    Index,
}

/// One search's text, folded, and the queries made of it.
#[derive(Debug, Clone)]
pub(super) struct Search {
    /// The folded search text.
    pub(super) needle: String,
    /// The FTS5 query for SQLite's trigram index (each trigram a quoted string, `AND`ed), when
    /// the text is long enough to have trigrams.
    pub(super) fts: Option<String>,
    /// The `LIKE` pattern for PostgreSQL (`%`, `_` and `\` escaped).
    pub(super) like: String,
}

impl Search {
    pub(super) fn new(text: &str) -> Self {
        let needle = fold(text);
        let chars: Vec<char> = needle.chars().collect();
        // A NUL ends a string for the tokenizer: such a search walks.
        let fts = (chars.len() >= TRIGRAM && !needle.contains('\0')).then(|| {
            let count = chars.len() - TRIGRAM + 1;
            let step = count.div_ceil(MAX_TRIGRAMS);
            let mut picked: Vec<usize> = (0..count).step_by(step).collect();
            if picked.last() != Some(&(count - 1)) {
                picked.push(count - 1);
            }
            picked
                .iter()
                .map(|&at| {
                    let trigram: String = chars[at..at + TRIGRAM].iter().collect();
                    format!("\"{}\"", trigram.replace('"', "\"\""))
                })
                .collect::<Vec<_>>()
                .join(" AND ")
        });
        let mut like = String::with_capacity(needle.len() + 2);
        like.push('%');
        for c in needle.chars() {
            if matches!(c, '%' | '_' | '\\') {
                like.push('\\');
            }
            like.push(c);
        }
        like.push('%');
        Self { needle, fts, like }
    }

    /// The plan of the first page.
    pub(super) fn first_plan(&self) -> Plan {
        if self.needle.is_empty() {
            Plan::All
        } else {
            Plan::Walk
        }
    }

    /// Whether the trigram index can serve this search.
    pub(super) fn indexed(&self) -> bool {
        self.fts.is_some()
    }

    /// Whether `order` matches: one of its items contains the text, both folded.
    pub(super) fn matches(&self, order: &Order) -> bool {
        self.needle.is_empty()
            || order
                .items
                .iter()
                .any(|item| fold(item).contains(&self.needle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_makes_case_variants_equal() {
        assert_eq!(fold("Straße"), fold("STRASSE"));
        assert_eq!(fold("İstanbul"), fold("istanbul"));
        assert_eq!(fold("ISTANBUL"), "istanbul");
        assert_eq!(fold("ΣΑΣ"), fold("σας"));
        assert_eq!(fold("Cafe\u{301}"), fold("CAFÉ"));
        assert_eq!(fold("ǅ"), fold("ǆ"));
    }

    #[test]
    fn ascii_folds_as_the_general_way_does() {
        let ascii: String = (0..128u8).map(char::from).collect();
        let general: String = ascii.chars().default_case_fold().nfc().collect();
        assert_eq!(fold(&ascii), general);
    }

    #[test]
    fn short_texts_have_no_trigram_query() {
        assert_eq!(Search::new("ab").fts, None);
        assert_eq!(Search::new("").first_plan(), Plan::All);
        assert_eq!(Search::new("a").first_plan(), Plan::Walk);
        assert_eq!(Search::new("abc").fts.as_deref(), Some("\"abc\""));
        assert_eq!(
            Search::new("A\"BCD").fts.as_deref(),
            Some("\"a\"\"b\" AND \"\"\"bc\" AND \"bcd\"")
        );
    }

    #[test]
    fn long_texts_put_at_most_a_dozen_trigrams_to_the_index_and_keep_both_ends() {
        let text = "abcdefghijklmnopqrstuvwxyz0123456789";
        let fts = Search::new(text).fts.unwrap();
        let trigrams: Vec<&str> = fts.split(" AND ").collect();
        assert!(trigrams.len() <= MAX_TRIGRAMS + 1, "{fts}");
        assert_eq!(trigrams.first(), Some(&"\"abc\""));
        assert_eq!(trigrams.last(), Some(&"\"789\""));
    }

    #[test]
    fn like_patterns_take_wildcards_literally() {
        assert_eq!(Search::new("5%_a\\b").like, "%5\\%\\_a\\\\b%");
    }

    #[test]
    fn an_order_matches_within_one_item_only() {
        let order = Order {
            items: vec!["Big Box".into(), "Small Crate".into()],
            ..Order::default()
        };
        assert!(Search::new("big b").matches(&order));
        assert!(Search::new("CRATE").matches(&order));
        assert!(!Search::new("box\nsmall").matches(&order));
        assert_eq!(search_text(&order.items), "big box\nsmall crate");
    }
}
