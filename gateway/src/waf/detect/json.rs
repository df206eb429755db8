//! A JSON body as the scan reads it: strings (borrowed from the body unless they hold escapes),
//! arrays, and objects as key-value lists in document order. Cheaper than a
//! `serde_json::Value` (no map, no copy of unescaped strings), and every duplicate key is kept:
//! a `Value` keeps only the last, so a payload in an earlier duplicate (which some backends
//! read) would go unscanned.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// One JSON value.
pub enum Json<'a> {
    Str(Cow<'a, str>),
    Arr(Vec<Json<'a>>),
    /// Keys and values in document order, duplicates included.
    Obj(Vec<(Cow<'a, str>, Json<'a>)>),
    /// Numbers, booleans, null: nothing to scan.
    Other,
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_i128<E>(self, _: i128) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_u128<E>(self, _: u128) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Arr(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<Json<'de>, Json<'de>>()? {
            // JSON keys are strings; anything else would not have parsed.
            let key = match key {
                Json::Str(k) => k,
                _ => Cow::Borrowed(""),
            };
            entries.push((key, value));
        }
        Ok(Json::Obj(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_borrowed_unless_escaped_and_duplicates_kept() {
        let text = br#"{"a":"plain","a":"t\u0041b","n":[1,true,null,{"k":"v"}]}"#;
        let Ok(Json::Obj(entries)) = serde_json::from_slice::<Json<'_>>(text) else {
            panic!("an object");
        };
        let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["a", "a", "n"]);
        assert!(matches!(&entries[0].1, Json::Str(Cow::Borrowed("plain"))));
        assert!(matches!(&entries[1].1, Json::Str(Cow::Owned(s)) if s == "tAb"));
        let Json::Arr(items) = &entries[2].1 else {
            panic!("an array");
        };
        assert_eq!(items.len(), 4);
        assert!(serde_json::from_slice::<Json<'_>>(b"{\"a\":").is_err());
    }
}
