//! How a document is laid out as a DynamoDB item, and the expressions that read and change it.
//!
//! Item: `pk` (S) = the workspace id, `sk` (S) = [`sort_key`]; an object document keeps each
//! top-level field `f` as a native attribute `f_<f>` (so `merge` is an UpdateItem `SET` and
//! `add_to_field` an `ADD`, both atomic on the server); any other document is one attribute `v`.
//! `ttl` (N) mirrors a numeric `expiresAt` for DynamoDB's TTL clean-up.
//!
//! Numbers travel as N strings and come back as i64, then u64, then f64: `2.0` reads back as
//! `2`, and DynamoDB refuses numbers beyond its 38 digits or 1e125. Nested objects are native
//! maps, whose keys DynamoDB may refuse when empty (`{"a": {"": 1}}`); top-level fields are
//! prefixed, so an empty top-level key is fine. Refusals surface as [`StoreError::Invalid`].

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Map, Number, Value};

use crate::store::{EXPIRES_AT, StoreError};

/// Partition key attribute: the workspace id.
pub const PK: &str = "pk";
/// Sort key attribute: collection and id, see [`sort_key`].
pub const SK: &str = "sk";
/// The table's TTL attribute (Unix seconds).
pub const TTL: &str = "ttl";
/// The whole of a document that is not a JSON object.
const VALUE: &str = "v";
/// Prefix of the attribute holding an object document's top-level field.
const FIELD: &str = "f_";

/// One DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// The attribute of top-level field `name`.
pub fn field(name: &str) -> String {
    format!("{FIELD}{name}")
}

/// Every sort key of `collection` starts with this; the collection is length-prefixed, so no
/// collection name (with `#` or `:` in it) can reach into another's keys.
pub fn collection_prefix(collection: &str) -> String {
    format!("{}:{collection}#", collection.len())
}

/// The sort key of a document.
pub fn sort_key(collection: &str, id: &str) -> String {
    format!("{}{id}", collection_prefix(collection))
}

/// The primary key of a document.
pub fn key(ws: &str, collection: &str, id: &str) -> Item {
    HashMap::from([
        (PK.to_owned(), AttributeValue::S(ws.to_owned())),
        (SK.to_owned(), AttributeValue::S(sort_key(collection, id))),
    ])
}

/// The TTL value for an `expiresAt`: whole seconds, rounded up (never earlier than the expiry).
fn ttl(expires_at: &Value) -> Option<AttributeValue> {
    let t = expires_at.as_f64().filter(|t| t.is_finite())?;
    Some(AttributeValue::N((t.ceil() as i64).to_string()))
}

/// The full item for a document at `key`.
pub fn encode(mut item: Item, doc: &Value) -> Item {
    match doc {
        Value::Object(fields) => {
            item.reserve(fields.len() + 1);
            for (name, value) in fields {
                item.insert(field(name), attribute(value));
            }
            if let Some(t) = fields.get(EXPIRES_AT).and_then(ttl) {
                item.insert(TTL.to_owned(), t);
            }
        }
        other => {
            item.insert(VALUE.to_owned(), attribute(other));
        }
    }
    item
}

/// The document an item holds.
pub fn decode(item: &Item) -> Result<Value, StoreError> {
    if let Some(v) = item.get(VALUE) {
        return value(v);
    }
    let mut doc = Map::new();
    for (name, attr) in item {
        if let Some(f) = name.strip_prefix(FIELD) {
            doc.insert(f.to_owned(), value(attr)?);
        }
    }
    Ok(Value::Object(doc))
}

/// A JSON value as an attribute value.
pub fn attribute(v: &Value) -> AttributeValue {
    match v {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(n) => AttributeValue::N(n.to_string()),
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(items) => AttributeValue::L(items.iter().map(attribute).collect()),
        Value::Object(fields) => AttributeValue::M(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), attribute(v)))
                .collect(),
        ),
    }
}

/// An attribute value as a JSON value.
pub fn value(a: &AttributeValue) -> Result<Value, StoreError> {
    Ok(match a {
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::N(n) => Value::Number(number(n)?),
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::L(items) => {
            Value::Array(items.iter().map(value).collect::<Result<_, _>>()?)
        }
        AttributeValue::M(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), value(v)?)))
                .collect::<Result<_, StoreError>>()?,
        ),
        other => {
            return Err(StoreError::Corrupt(format!(
                "an attribute of a type cedargate never writes: {other:?}"
            )));
        }
    })
}

/// An N string as a JSON number, integers first.
pub fn number(n: &str) -> Result<Number, StoreError> {
    if let Ok(i) = n.parse::<i64>() {
        return Ok(i.into());
    }
    if let Ok(u) = n.parse::<u64>() {
        return Ok(u.into());
    }
    n.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .ok_or_else(|| StoreError::Corrupt(format!("not a number: {n:?}")))
}

/// Placeholders for one expression: every attribute name and value goes through here, so no
/// field name is ever parsed as expression syntax.
#[derive(Debug, Default)]
pub struct Expr {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expr {
    /// The placeholder of attribute `name` (reused when asked twice).
    pub fn name(&mut self, name: &str) -> String {
        if let Some((k, _)) = self.names.iter().find(|(_, v)| v.as_str() == name) {
            return k.clone();
        }
        let k = format!("#n{}", self.names.len());
        self.names.insert(k.clone(), name.to_owned());
        k
    }

    /// The placeholder of a value.
    pub fn value(&mut self, v: AttributeValue) -> String {
        let k = format!(":v{}", self.values.len());
        self.values.insert(k.clone(), v);
        k
    }

    /// The condition "the item, if any, is not expired at `now`".
    pub fn live(&mut self, now: f64) -> String {
        let e = self.name(&field(EXPIRES_AT));
        let n = self.value(AttributeValue::S("N".into()));
        let now = self.value(AttributeValue::N(format!("{now:.3}")));
        format!("(attribute_not_exists({e}) OR NOT attribute_type({e}, {n}) OR {e} >= {now})")
    }

    /// The condition "the item exists and is expired at `now`".
    pub fn expired(&mut self, now: f64) -> String {
        let e = self.name(&field(EXPIRES_AT));
        let n = self.value(AttributeValue::S("N".into()));
        let now = self.value(AttributeValue::N(format!("{now:.3}")));
        format!("(attribute_type({e}, {n}) AND {e} < {now})")
    }

    /// The condition "a live document is at the key".
    pub fn present(&mut self, now: f64) -> String {
        let pk = self.name(PK);
        format!("attribute_exists({pk}) AND {}", self.live(now))
    }

    /// The condition "no live document is at the key".
    pub fn absent(&mut self, now: f64) -> String {
        let pk = self.name(PK);
        format!("attribute_not_exists({pk}) OR {}", self.expired(now))
    }

    /// The name placeholders, `None` when there are none (DynamoDB refuses an empty map).
    pub fn names(&self) -> Option<HashMap<String, String>> {
        (!self.names.is_empty()).then(|| self.names.clone())
    }

    /// The value placeholders, `None` when there are none.
    pub fn values(&self) -> Option<HashMap<String, AttributeValue>> {
        (!self.values.is_empty()).then(|| self.values.clone())
    }
}

/// An UpdateItem: its update expression, condition and placeholders.
#[derive(Debug)]
pub struct Update {
    pub update: String,
    pub condition: String,
    pub expr: Expr,
}

/// `merge`: set every field of `patch` on a live object document. `None` for an empty patch
/// (nothing to update; the caller only checks the condition).
pub fn merge(patch: &Map<String, Value>, now: f64) -> (Option<String>, String, Expr) {
    let mut expr = Expr::default();
    let v = expr.name(VALUE);
    let condition = format!("{} AND attribute_not_exists({v})", expr.present(now));
    if patch.is_empty() {
        return (None, condition, expr);
    }
    let mut sets = Vec::with_capacity(patch.len() + 1);
    let mut remove = None;
    for (name, value) in patch {
        let n = expr.name(&field(name));
        let v = expr.value(attribute(value));
        sets.push(format!("{n} = {v}"));
    }
    if let Some(expires_at) = patch.get(EXPIRES_AT) {
        let t = expr.name(TTL);
        match ttl(expires_at) {
            Some(ttl) => {
                let v = expr.value(ttl);
                sets.push(format!("{t} = {v}"));
            }
            None => remove = Some(t),
        }
    }
    let mut update = format!("SET {}", sets.join(", "));
    if let Some(t) = remove {
        update.push_str(&format!(" REMOVE {t}"));
    }
    (Some(update), condition, expr)
}

/// `add_to_field`: `ADD` `delta` to `name` on a live (or missing) document when the result stays
/// within `floor..=i64::MAX`, turning a non-object document into an object as the embedded store
/// does. `None` when no current value could satisfy that.
///
/// DynamoDB cannot compute in a condition, so the bounds move to the current value:
/// `floor - delta <= current <= i64::MAX - delta` (a missing field counts as 0).
pub fn add(name: &str, delta: i64, floor: i64, now: f64) -> Option<Update> {
    let lo = (i128::from(floor) - i128::from(delta)).max(i128::from(i64::MIN));
    let hi = (i128::from(i64::MAX) - i128::from(delta)).min(i128::from(i64::MAX));
    if lo > hi {
        return None;
    }
    let mut expr = Expr::default();
    let f = expr.name(&field(name));
    let live = expr.live(now);
    let lo_v = expr.value(AttributeValue::N(lo.to_string()));
    let hi_v = expr.value(AttributeValue::N(hi.to_string()));
    // Not `BETWEEN`: moto evaluates `0 BETWEEN -1 AND 1` as false.
    let mut range = format!("{f} >= {lo_v} AND {f} <= {hi_v}");
    if lo <= 0 && 0 <= hi {
        range = format!("attribute_not_exists({f}) OR {range}");
    }
    let d = expr.value(AttributeValue::N(delta.to_string()));
    let v = expr.name(VALUE);
    Some(Update {
        update: format!("ADD {f} {d} REMOVE {v}"),
        condition: format!("{live} AND ({range})"),
        expr,
    })
}

/// The integer an `add` left in `name`, from the returned attributes.
pub fn added(attributes: Option<&Item>, name: &str) -> Result<i64, StoreError> {
    attributes
        .and_then(|a| a.get(&field(name)))
        .and_then(|a| a.as_n().ok())
        .and_then(|n| n.parse::<i64>().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("`{name}` is not an integer after ADD")))
}
