//! Items: validation and storage. Shared by the gRPC and HTTP handlers.

use std::collections::{BTreeMap, HashMap};

use crate::{
    db::{self, Database},
    error::ApiError,
    event_writer::EventWriter,
};
use embeddingmap_proto::api as pb;
use serde::{Deserialize, Serialize};

pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_CATEGORY_CHARS: usize = 100;
pub const MAX_ATTRIBUTES: usize = 50;
pub const MAX_ATTRIBUTE_KEY_CHARS: usize = 100;
pub const MAX_ATTRIBUTE_VALUE_CHARS: usize = 2000;
pub const MAX_IMPORT_ITEMS: usize = 10_000;
pub const MAX_PAGE_SIZE: u32 = 1000;
pub const DEFAULT_PAGE_SIZE: u32 = 100;

/// An item as a client sends it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    pub id: i64,
    pub name: String,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// An item as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    pub id: i64,
    pub name: String,
    pub category: String,
    pub attributes: BTreeMap<String, String>,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<pb::NewItem> for NewItem {
    fn from(item: pb::NewItem) -> Self {
        NewItem {
            id: item.id,
            name: item.name,
            category: item.category,
            attributes: item.attributes.into_iter().collect(),
        }
    }
}

impl From<Item> for pb::Item {
    fn from(item: Item) -> Self {
        pb::Item {
            id: item.id,
            name: item.name,
            category: item.category,
            attributes: item.attributes.into_iter().collect(),
            created_at: Some(db::timestamp(item.created_at)),
            updated_at: Some(db::timestamp(item.updated_at)),
        }
    }
}

/// What text a field holds: one line (names, categories, attribute keys), or lines (attribute
/// values, which may also hold tabs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Text {
    Line,
    Lines,
}

/// The bidirectional-text controls: marks, embeddings, overrides and isolates. They reorder what
/// is shown around them (U+202E shows `gpj.exe` as `exe.jpg`).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The one rule for item text: from `min` to `max` characters, and no control character (C0 with
/// NUL, DEL, C1) nor bidi control, except tab, line feed and carriage return in `Text::Lines`.
/// Item text reaches terminals (logs) and spreadsheets (CSV exports), where an ANSI escape or a
/// bidi override makes what is shown differ from what is stored; so it is refused where it
/// enters, rather than escaped at every place it leaves.
fn check_text(field: &str, value: &str, min: usize, max: usize, text: Text) -> Result<(), ApiError> {
    let chars = value.chars().count();
    if chars < min || chars > max {
        return Err(ApiError::invalid(field, format!("must be {min} to {max} characters, got {chars}")));
    }
    let line_break = |c: char| text == Text::Lines && matches!(c, '\t' | '\n' | '\r');
    let refused = |c: char| (c.is_control() && !line_break(c)) || is_bidi_control(c);
    if let Some((at, c)) = value.chars().enumerate().find(|&(_, c)| refused(c)) {
        let what = if c.is_control() { "a control character" } else { "a bidirectional-text control" };
        let lines = if text == Text::Lines { " (tab and line breaks are allowed)" } else { "" };
        return Err(ApiError::invalid(
            field,
            format!("must not contain {what}: U+{:04X} at character {at}{lines}", c as u32),
        ));
    }
    Ok(())
}

impl NewItem {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ApiError> {
        check_text("name", &self.name, 1, MAX_NAME_CHARS, Text::Line)?;
        if self.name.trim().is_empty() {
            return Err(ApiError::invalid("name", "must not be blank"));
        }
        check_text("category", &self.category, 0, MAX_CATEGORY_CHARS, Text::Line)?;
        if self.attributes.len() > MAX_ATTRIBUTES {
            return Err(ApiError::invalid("attributes", format!("at most {MAX_ATTRIBUTES} entries")));
        }
        for (key, value) in &self.attributes {
            check_text("attributes key", key, 1, MAX_ATTRIBUTE_KEY_CHARS, Text::Line)?;
            check_text(&format!("attributes[{key}]"), value, 0, MAX_ATTRIBUTE_VALUE_CHARS, Text::Lines)?;
        }
        Ok(())
    }

    pub(crate) fn attributes_json(&self) -> String {
        serde_json::to_string(&self.attributes).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// Checks an import as a whole, before anything of it is queued or written: its size, each item
/// (the error names `items[i].field`), and that no id comes twice, since which copy would be
/// kept is not for the order of a list to decide.
pub fn validate_import(items: &[NewItem]) -> Result<(), ApiError> {
    if items.len() > MAX_IMPORT_ITEMS {
        return Err(ApiError::invalid("items", format!("at most {MAX_IMPORT_ITEMS} per import")));
    }
    let mut first_of: HashMap<i64, usize> = HashMap::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        item.validate().map_err(|error| match error {
            ApiError::InvalidArgument { field, reason } => ApiError::invalid(format!("items[{index}].{field}"), reason),
            other => other,
        })?;
        if let Some(first) = first_of.insert(item.id, index) {
            return Err(ApiError::invalid(
                format!("items[{index}].id"),
                format!("id {} comes twice: same id as items[{first}]", item.id),
            ));
        }
    }
    Ok(())
}

fn to_json(value: &impl Serialize) -> Result<String, ApiError> {
    serde_json::to_string(value).map_err(|error| ApiError::Internal(error.to_string()))
}

/// A checked import, encoded for its two statements: written by the writer task (`event_writer`)
/// between event batches.
pub struct Import {
    /// `[[id, name, category, attributes JSON], ...]`.
    pub(crate) rows: String,
    /// `[id, ...]`.
    pub(crate) ids: String,
    count: u32,
}

impl Import {
    /// Encodes `items`, which `validate_import` passed. The encoding happens here, in the caller's
    /// task, so the writer spends its time on the database alone.
    pub fn new(items: &[NewItem]) -> Result<Import, ApiError> {
        let rows: Vec<(i64, &str, &str, String)> = items
            .iter()
            .map(|item| (item.id, item.name.as_str(), item.category.as_str(), item.attributes_json()))
            .collect();
        let ids: Vec<i64> = items.iter().map(|item| item.id).collect();
        Ok(Import { rows: to_json(&rows)?, ids: to_json(&ids)?, count: items.len() as u32 })
    }

    /// Creates or replaces every item in one transaction, all or nothing, as of `now` (created
    /// items get it as both timestamps, replaced ones keep their `created_at`); returns
    /// (created, updated).
    pub(crate) async fn write(&self, db: &Database, now: i64) -> Result<(u32, u32), sqlx::Error> {
        let updated = db.import_items(self, now).await?;
        Ok((self.count - updated, updated))
    }
}

/// Items in the database, and their version (`items_version`), which every item write bumps in
/// its own transaction, so views built from items (the joined map and its ETag) know when they
/// are stale, also across restarts and replicas. Imports are written by the writer task, which
/// also writes the events (`event_writer`), so a bulk write never holds public writes back for
/// long; single-item writes are short and go to the database directly.
#[derive(Clone)]
pub struct ItemStore {
    db: Database,
    writer: EventWriter,
}

impl ItemStore {
    pub fn new(db: Database, writer: EventWriter) -> Self {
        ItemStore { db, writer }
    }

    /// The committed items' version.
    pub async fn version(&self) -> Result<i64, ApiError> {
        Ok(self.db.items_version().await?)
    }

    pub async fn create(&self, item: &NewItem) -> Result<Item, ApiError> {
        item.validate()?;
        self.db
            .create_item(item, db::now_millis())
            .await?
            .ok_or_else(|| ApiError::AlreadyExists { what: format!("item {}", item.id) })
    }

    pub async fn update(&self, item: &NewItem) -> Result<Item, ApiError> {
        item.validate()?;
        self.db
            .update_item(item, db::now_millis())
            .await?
            .ok_or_else(|| ApiError::not_found(format!("item {}", item.id)))
    }

    pub async fn get(&self, id: i64) -> Result<Item, ApiError> {
        self.db.item(id).await?.ok_or_else(|| ApiError::not_found(format!("item {id}")))
    }

    /// A page of items by ascending id; the token is the last id of the previous page.
    pub async fn list(&self, page_size: u32, page_token: &str) -> Result<(Vec<Item>, String), ApiError> {
        let page_size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(ApiError::invalid("page_size", format!("at most {MAX_PAGE_SIZE}")));
            }
            n => n,
        };
        // No token: from the first id, i64::MIN included (so no "after" bound at all).
        let after = if page_token.is_empty() {
            None
        } else {
            Some(
                page_token
                    .parse::<i64>()
                    .map_err(|_| ApiError::invalid("page_token", "not a token this service issued"))?,
            )
        };
        let mut items = self.db.items(after, i64::from(page_size) + 1).await?;
        let next = if items.len() > page_size as usize {
            items.truncate(page_size as usize);
            items.last().map(|item| item.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((items, next))
    }

    /// Creates or replaces all `items` in one transaction, all or nothing; returns (created,
    /// updated). Checked here, before it is queued; then written by the writer task after the
    /// events queued before it.
    pub async fn import(&self, items: &[NewItem]) -> Result<(u32, u32), ApiError> {
        validate_import(items)?;
        self.writer.import(Import::new(items)?).await
    }

    /// The attribute names the items carry, in name order (at most `MAX_FIELDS`).
    pub async fn attribute_names(&self) -> Result<Vec<String>, ApiError> {
        Ok(self.db.attribute_names(MAX_FIELDS as i64).await?)
    }

    /// Every item's value of the attribute `name`, by id (items without it are absent).
    pub async fn attribute_values(&self, name: &str) -> Result<HashMap<i64, String>, ApiError> {
        Ok(self.db.attribute_values(name).await?)
    }

    /// The names and categories of those of `ids` that are items.
    pub async fn labels_of(&self, ids: &[i64]) -> Result<HashMap<i64, (String, String)>, ApiError> {
        Ok(self.db.labels(Some(ids)).await?)
    }

    /// Every item's name and category by id, for joining with the map.
    pub async fn labels(&self) -> Result<HashMap<i64, (String, String)>, ApiError> {
        Ok(self.db.labels(None).await?)
    }
}

/// Most attribute names the map offers to colour by.
pub const MAX_FIELDS: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: i64, name: &str) -> NewItem {
        NewItem { id, name: name.to_owned(), category: String::new(), attributes: BTreeMap::new() }
    }

    fn refused_field(result: Result<(), ApiError>) -> Option<String> {
        match result {
            Err(ApiError::InvalidArgument { field, .. }) => Some(field),
            _ => None,
        }
    }

    #[test]
    fn an_import_with_an_id_twice_is_refused_naming_the_second() {
        let items = [item(5, "a"), item(6, "b"), item(7, "c"), item(5, "a again")];
        match validate_import(&items) {
            Err(ApiError::InvalidArgument { field, reason }) => {
                assert_eq!(field, "items[3].id");
                assert!(reason.contains("items[0]"), "{reason}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(validate_import(&items[..3]).is_ok());
        // A bad field before the duplicate is named first.
        let items = [item(1, "a"), item(2, "\u{1b}[2J"), item(1, "b")];
        assert_eq!(refused_field(validate_import(&items)).as_deref(), Some("items[1].name"));
    }

    #[test]
    fn control_and_bidi_characters_are_refused_except_line_breaks_in_values() {
        let refused = [
            "nul\0",
            "bell\u{7}",
            "\u{1b}[31mred",
            "del\u{7f}",
            "c1 \u{85}",
            "c1 \u{9b}31m",
            "tab\t",
            "line\nbreak",
            "cr\r",
            "\u{202e}gpj.exe",
            "\u{202a}",
            "\u{202d}",
            "lrm\u{200e}",
            "rlm\u{200f}",
            "alm\u{61c}",
            "\u{2066}",
            "\u{2069}",
        ];
        for text in refused {
            let named = NewItem { name: text.to_owned(), ..item(1, "") };
            assert_eq!(refused_field(named.validate()).as_deref(), Some("name"), "name {text:?}");
            let category = NewItem { category: text.to_owned(), ..item(1, "fine") };
            assert_eq!(refused_field(category.validate()).as_deref(), Some("category"), "category {text:?}");
            let key = NewItem { attributes: [(text.to_owned(), "v".to_owned())].into(), ..item(1, "fine") };
            assert_eq!(refused_field(key.validate()).as_deref(), Some("attributes key"), "key {text:?}");
        }
        for text in ["\u{1b}[31m", "bell\u{7}", "\u{202e}", "\u{85}", "\u{2068}"] {
            let value = NewItem { attributes: [("k".to_owned(), text.to_owned())].into(), ..item(1, "fine") };
            assert_eq!(refused_field(value.validate()).as_deref(), Some("attributes[k]"), "value {text:?}");
        }
        let value = NewItem { attributes: [("k".to_owned(), "a\tb\r\nc\n".to_owned())].into(), ..item(1, "fine") };
        assert!(value.validate().is_ok(), "tab and line breaks in a value");
        // Ordinary text of any script, joiners and emoji included, is fine.
        for text in [
            "Zoë's café",
            "東京 タワー",
            "שלום עולם",
            "مرحبا",
            "👩\u{200d}💻 dev",
            "a\u{200b}b",
            "'); DROP TABLE items;--",
        ] {
            let fine = NewItem {
                category: text.to_owned(),
                attributes: [(text.to_owned(), text.to_owned())].into(),
                ..item(1, text)
            };
            assert!(fine.validate().is_ok(), "{text:?}");
        }
        let message = NewItem { name: "ab\u{202e}c".to_owned(), ..item(1, "") }.validate().unwrap_err().to_string();
        assert!(message.contains("U+202E at character 2"), "{message}");
    }

    /// Stored rows, timestamps included.
    async fn rows(db: &Database) -> Vec<(i64, String, String, String, i64, i64)> {
        sqlx::query_as("SELECT id, name, category, attributes, created_at, updated_at FROM items ORDER BY id")
            .fetch_all(db.as_sqlite().unwrap())
            .await
            .unwrap()
    }

    /// The import item by item, through the single-item writes: created, else updated.
    async fn import_row_by_row(db: &Database, items: &[NewItem], now: i64) -> (u32, u32) {
        let (mut created, mut updated) = (0, 0);
        for item in items {
            if db.create_item(item, now).await.unwrap().is_some() {
                created += 1
            } else {
                db.update_item(item, now).await.unwrap().unwrap();
                updated += 1
            }
        }
        (created, updated)
    }

    async fn sqlite_database(path: &std::path::Path) -> Database {
        db::open(&db::Target::Sqlite(path.to_owned()), 1, db::Checkpoints::Sqlite).await.unwrap()
    }

    #[tokio::test]
    async fn the_set_based_import_counts_and_stores_as_row_by_row_did() {
        let dir = tempfile::tempdir().unwrap();
        let set_based = sqlite_database(&dir.path().join("set.sqlite3")).await;
        let row_by_row = sqlite_database(&dir.path().join("rows.sqlite3")).await;
        let with = |id: i64, name: &str, category: &str, attributes: &[(&str, &str)]| NewItem {
            id,
            name: name.to_owned(),
            category: category.to_owned(),
            attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let first = vec![
            with(i64::MIN, "lowest", "", &[]),
            with(-1, "minus one", "edge", &[("note", "line one\nline two\t\"quoted\" \\ back")]),
            with(0, "zero", "numbers", &[("b", "2"), ("a", "1")]),
            with(1, "123", "  spaced  ", &[("json", "{\"not\": \"parsed\"}"), ("empty", "")]),
            with(2, "Zoë 東京 👩\u{200d}💻", "unicode", &[("ключ", "значение")]),
            with(i64::MAX, "highest", "", &[]),
        ];
        let second = vec![
            with(2, "renamed", "unicode", &[]),
            with(1, "one", "numbers", &[("a", "x")]),
            with(3, "three", "new", &[("k", "v")]),
            with(i64::MAX, "highest again", "", &[("k", "v")]),
        ];
        for (items, now) in [(&first, 1_000), (&second, 2_000), (&second, 3_000)] {
            validate_import(items).unwrap();
            let counted = Import::new(items).unwrap().write(&set_based, now).await.unwrap();
            assert_eq!(counted, import_row_by_row(&row_by_row, items, now).await);
        }
        let stored = rows(&set_based).await;
        assert_eq!(stored, rows(&row_by_row).await);
        // Created at the first import, replaced at the last: created_at kept, updated_at moved.
        let of = |id: i64| stored.iter().find(|row| row.0 == id).unwrap().clone();
        assert_eq!((of(2).1.as_str(), of(2).4, of(2).5), ("renamed", 1_000, 3_000));
        assert_eq!((of(-1).4, of(-1).5), (1_000, 1_000));
        assert_eq!((of(3).4, of(3).5), (2_000, 3_000));
        assert_eq!(of(1).3, serde_json::to_string(&BTreeMap::from([("a", "x")])).unwrap());
        assert_eq!(stored.len(), 7);
        assert_eq!(set_based.items_version().await.unwrap(), 3, "one version per import");
    }

    #[tokio::test]
    async fn the_first_and_repeated_imports_count_created_and_updated() {
        let dir = tempfile::tempdir().unwrap();
        let pool = sqlite_database(&dir.path().join("counts.sqlite3")).await;
        let items: Vec<NewItem> = (0..10_000).map(|id| item(id, &format!("item {id}"))).collect();
        assert_eq!(Import::new(&items).unwrap().write(&pool, 1).await.unwrap(), (10_000, 0));
        assert_eq!(Import::new(&items[5_000..]).unwrap().write(&pool, 2).await.unwrap(), (0, 5_000));
        let more: Vec<NewItem> = (9_000..11_000).map(|id| item(id, "more")).collect();
        assert_eq!(Import::new(&more).unwrap().write(&pool, 3).await.unwrap(), (1_000, 1_000));
        assert_eq!(Import::new(&[]).unwrap().write(&pool, 4).await.unwrap(), (0, 0));
    }
}
