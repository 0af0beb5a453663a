//! Where a key is in the TOML text: key paths (`webhooks[1].headers.X-Tenant`), the
//! path of the item at a byte offset, the line of a path, and removing a path from a
//! document. Built on `toml_edit`, which keeps the spans `toml`'s serde errors point
//! into.

use std::fmt;

use toml_edit::{ImDocument, Item, Table, Value};

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// A key of a table.
    Key(String),
    /// An element of an array (of tables).
    Index(usize),
}

/// A key path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Segment>);

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

impl KeyPath {
    /// Parses the dotted form (`webhooks[1].batch.max_events`).
    pub fn parse(text: &str) -> Self {
        let mut segments = Vec::new();
        for part in text.split('.') {
            let (key, indices) = part.split_once('[').unwrap_or((part, ""));
            if !key.is_empty() {
                segments.push(Segment::Key(key.to_owned()));
            }
            for index in indices.split('[').filter(|s| !s.is_empty()) {
                if let Ok(index) = index.trim_end_matches(']').parse() {
                    segments.push(Segment::Index(index));
                }
            }
        }
        Self(segments)
    }
}

/// 1-based line and column of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    crate::textpos::line_column(text, offset)
}

fn contains(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

/// The path of the innermost key, value or table header at `offset`.
pub fn path_at(doc: &ImDocument<String>, offset: usize) -> Option<KeyPath> {
    let mut path = Vec::new();
    in_table(doc.as_table(), offset, &mut path).then_some(KeyPath(path))
}

fn in_table(table: &Table, offset: usize, path: &mut Vec<Segment>) -> bool {
    for (key, item) in table.iter() {
        path.push(Segment::Key(key.to_owned()));
        let key_span = table.key(key).and_then(|k| k.span());
        if in_item(item, offset, path) || contains(key_span, offset) {
            return true;
        }
        path.pop();
    }
    false
}

fn in_item(item: &Item, offset: usize, path: &mut Vec<Segment>) -> bool {
    match item {
        Item::Table(table) => in_table(table, offset, path) || contains(table.span(), offset),
        Item::ArrayOfTables(array) => {
            for (index, table) in array.iter().enumerate() {
                path.push(Segment::Index(index));
                if in_table(table, offset, path) || contains(table.span(), offset) {
                    return true;
                }
                path.pop();
            }
            false
        }
        Item::Value(value) => in_value(value, offset, path),
        Item::None => false,
    }
}

fn in_value(value: &Value, offset: usize, path: &mut Vec<Segment>) -> bool {
    match value {
        Value::InlineTable(table) => {
            for (key, value) in table.iter() {
                path.push(Segment::Key(key.to_owned()));
                let key_span = table.key(key).and_then(|k| k.span());
                if in_value(value, offset, path) || contains(key_span, offset) {
                    return true;
                }
                path.pop();
            }
            contains(value.span(), offset)
        }
        _ => contains(value.span(), offset),
    }
}

/// The line of `path` in the document, or of its nearest ancestor that is written
/// out (a key left at its default has no line of its own).
pub fn line_of(doc: &ImDocument<String>, path: &KeyPath) -> Option<usize> {
    position_of(doc, path).map(|(line, _)| line)
}

/// Line and column of `path` (or of its nearest written ancestor).
pub fn position_of(doc: &ImDocument<String>, path: &KeyPath) -> Option<(usize, usize)> {
    let text = doc.raw();
    let mut best = None;
    let mut table = Some(doc.as_table());
    let mut item: Option<&Item> = None;
    for segment in &path.0 {
        match segment {
            Segment::Key(key) => {
                let Some(current) = table else { break };
                let Some(next) = current.get(key) else { break };
                let span = current
                    .key(key)
                    .and_then(|k| k.span())
                    .or_else(|| next.span());
                if let Some(span) = span {
                    best = Some(line_column(text, span.start));
                }
                table = next.as_table();
                item = Some(next);
            }
            Segment::Index(index) => {
                let Some(array) = item.and_then(Item::as_array_of_tables) else {
                    break;
                };
                let Some(element) = array.get(*index) else {
                    break;
                };
                if let Some(span) = element.span() {
                    best = Some(line_column(text, span.start));
                }
                table = Some(element);
                item = None;
            }
        }
    }
    best
}

/// The offset where the value at `path` starts (for a leaf key), if it is written.
pub fn value_offset(doc: &ImDocument<String>, path: &KeyPath) -> Option<usize> {
    let (last, parents) = path.0.split_last()?;
    let Segment::Key(key) = last else { return None };
    let mut table = doc.as_table();
    let mut item: Option<&Item> = None;
    for segment in parents {
        match segment {
            Segment::Key(k) => {
                let next = table.get(k)?;
                item = Some(next);
                if let Some(t) = next.as_table() {
                    table = t;
                }
            }
            Segment::Index(i) => table = item?.as_array_of_tables()?.get(*i)?,
        }
    }
    table.get(key)?.span().map(|s| s.start)
}

/// Removes the item at `path` from `doc` (a leaf key, a table, or an element of an
/// array of tables); false if it is not there.
pub fn remove(doc: &mut toml_edit::DocumentMut, path: &KeyPath) -> bool {
    remove_from_table(doc.as_table_mut(), &path.0)
}

fn remove_from_table(table: &mut Table, path: &[Segment]) -> bool {
    match path {
        [Segment::Key(key)] => table.remove(key).is_some(),
        [Segment::Key(key), rest @ ..] => table
            .get_mut(key)
            .is_some_and(|item| remove_from_item(item, rest)),
        _ => false,
    }
}

fn remove_from_item(item: &mut Item, path: &[Segment]) -> bool {
    match (item, path) {
        (Item::Table(table), _) => remove_from_table(table, path),
        (Item::ArrayOfTables(array), [Segment::Index(index)]) if *index < array.len() => {
            array.remove(*index);
            true
        }
        (Item::ArrayOfTables(array), [Segment::Index(index), rest @ ..]) => array
            .get_mut(*index)
            .is_some_and(|table| remove_from_table(table, rest)),
        (Item::Value(Value::InlineTable(table)), _) => remove_from_inline(table, path),
        _ => false,
    }
}

fn remove_from_inline(table: &mut toml_edit::InlineTable, path: &[Segment]) -> bool {
    match path {
        [Segment::Key(key)] => table.remove(key).is_some(),
        [Segment::Key(key), rest @ ..] => match table.get_mut(key) {
            Some(Value::InlineTable(inner)) => remove_from_inline(inner, rest),
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "max_peers = 10\n[metrics]\nlisten = \"x\"\n[[webhooks]]\nname = \"a\"\n[[webhooks]]\nname = \"b\"\n[webhooks.headers]\nX-Tenant = \"blue\"\n";

    fn doc() -> ImDocument<String> {
        ImDocument::parse(TEXT.to_owned()).unwrap()
    }

    #[test]
    fn paths_print_and_parse() {
        let path = KeyPath::parse("webhooks[1].headers.X-Tenant");
        assert_eq!(path.to_string(), "webhooks[1].headers.X-Tenant");
        assert_eq!(path.0.len(), 4);
    }

    #[test]
    fn the_item_at_an_offset_and_the_line_of_a_path() {
        let doc = doc();
        let offset = TEXT.find("X-Tenant").unwrap();
        let path = path_at(&doc, offset).unwrap();
        assert_eq!(path.to_string(), "webhooks[1].headers.X-Tenant");
        assert_eq!(line_of(&doc, &path), Some(9));
        let value = TEXT.find("\"x\"").unwrap();
        assert_eq!(path_at(&doc, value).unwrap().to_string(), "metrics.listen");
        assert_eq!(line_of(&doc, &KeyPath::parse("webhooks[1].name")), Some(7));
        assert_eq!(
            line_of(&doc, &KeyPath::parse("webhooks[0].url")),
            Some(4),
            "a key at its default: the line of its table"
        );
        assert_eq!(line_of(&doc, &KeyPath::parse("max_peers")), Some(1));
    }

    #[test]
    fn removing_paths() {
        let mut doc: toml_edit::DocumentMut = TEXT.parse().unwrap();
        assert!(remove(
            &mut doc,
            &KeyPath::parse("webhooks[1].headers.X-Tenant")
        ));
        assert!(remove(&mut doc, &KeyPath::parse("metrics.listen")));
        assert!(!remove(&mut doc, &KeyPath::parse("metrics.nothing")));
        let text = doc.to_string();
        assert!(
            !text.contains("X-Tenant") && !text.contains("listen"),
            "{text}"
        );
        assert!(text.contains("name = \"b\""));
    }
}
