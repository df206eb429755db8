//! What every handler shares: the request context, the reply, query parameters, pagination and
//! the JSON body.

pub mod catalog;
pub mod content;
pub mod gamify;
pub mod points;
pub mod users;
pub mod validate;

use std::ops::ControlFlow;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::assertion::Assertion;
use crate::error::{ApiError, clip};
use crate::store::{self, Store};

/// Which API a path is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// `/app/v1`: end users.
    App,
    /// `/dashboard/v1`: managers.
    Dashboard,
    /// `/internal/v1`: the gateway's own lookups (the user directory for delegation); the
    /// gateway never forwards client requests here.
    Internal,
}

/// The request method, reduced to what the routes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
    /// Anything else (matches no route).
    Other,
}

impl From<&http::Method> for Verb {
    fn from(m: &http::Method) -> Verb {
        match *m {
            http::Method::GET => Verb::Get,
            http::Method::POST => Verb::Post,
            http::Method::PUT => Verb::Put,
            http::Method::PATCH => Verb::Patch,
            http::Method::DELETE => Verb::Delete,
            _ => Verb::Other,
        }
    }
}

/// One authenticated request, ready for a handler.
#[derive(Debug)]
pub struct Ctx {
    /// The method.
    pub verb: Verb,
    /// App or dashboard.
    pub area: Area,
    /// The workspace from the path (equal to the assertion's).
    pub ws: String,
    /// The decoded path segments after the workspace id.
    pub rest: Vec<String>,
    /// The query parameters.
    pub query: Query,
    /// The verified identity.
    pub caller: Assertion,
    /// The request body (at most `MAX_BODY_BYTES`).
    pub body: Bytes,
}

/// A successful answer.
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The JSON body; `None` for 204.
    pub body: Option<Value>,
}

impl Reply {
    /// 200 with `body`.
    pub fn ok(body: Value) -> Result<Reply, ApiError> {
        Ok(Reply {
            status: StatusCode::OK,
            body: Some(body),
        })
    }

    /// 201 with the created `body`.
    pub fn created(body: Value) -> Result<Reply, ApiError> {
        Ok(Reply {
            status: StatusCode::CREATED,
            body: Some(body),
        })
    }

    /// 204.
    pub fn no_content() -> Result<Reply, ApiError> {
        Ok(Reply {
            status: StatusCode::NO_CONTENT,
            body: None,
        })
    }
}

/// Decoded query parameters; a name given twice is refused, so the gateway's policy and the
/// backend can never read different values of one parameter.
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parse the raw query string.
    pub fn parse(raw: Option<&str>) -> Result<Query, ApiError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(ApiError::field(clip(&k, 64), "must be given at most once"));
            }
            pairs.push((k.into_owned(), v.into_owned()));
        }
        Ok(Query(pairs))
    }

    /// The value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The page size when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 50;
/// The largest `limit`.
pub const MAX_LIMIT: usize = 100;

/// `limit` and `nextToken` of a list request.
#[derive(Debug)]
pub struct PageParams {
    limit: usize,
    after: Option<String>,
    offset: usize,
}

/// The largest `offset`.
pub const MAX_OFFSET: usize = 10_000;

impl PageParams {
    /// Read and check `limit` (1..=100, default 50) and `nextToken`.
    pub fn from_query(q: &Query) -> Result<PageParams, ApiError> {
        let limit = match q.get("limit") {
            None => DEFAULT_LIMIT,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::field(
                        "limit",
                        format!("must be an integer from 1 to {MAX_LIMIT}"),
                    ));
                }
            },
        };
        let after = match q.get("nextToken") {
            None | Some("") => None,
            Some(token) => Some(
                decode_token(token).ok_or_else(|| ApiError::field("nextToken", "is not valid"))?,
            ),
        };
        let offset = match q.get("offset") {
            None => 0,
            Some(_) if after.is_some() => {
                return Err(ApiError::field(
                    "offset",
                    "cannot be combined with nextToken",
                ));
            }
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if n <= MAX_OFFSET => n,
                _ => {
                    return Err(ApiError::field(
                        "offset",
                        format!("must be an integer from 0 to {MAX_OFFSET}"),
                    ));
                }
            },
        };
        Ok(PageParams {
            limit,
            after,
            offset,
        })
    }
}

/// `{"items": [...], "nextToken": ...}` for one page of `items`, which must be sorted by key.
/// The token names the last key served, so a page stays stable when items are added or removed;
/// `offset` (instead of a token) skips that many items first.
pub fn paginate(items: Vec<(String, Value)>, p: &PageParams) -> Value {
    let mut pager = Pager::new(p);
    for (k, v) in items {
        if pager.offer(&k, || v).is_break() {
            break;
        }
    }
    pager.finish()
}

/// One page of a collection, as [`paginate`] would cut it from the items `keep` accepts, but
/// read from the store in chunks and only as far as the page needs (one item beyond it, to
/// know whether there is a next page): for logs that grow without bound, such as the ledger
/// and the activities, where loading the whole collection per request would not scale.
pub async fn page_of(
    store: &dyn Store,
    ws: &str,
    collection: &str,
    p: &PageParams,
    keep: impl Fn(&Value) -> bool,
) -> Result<Value, ApiError> {
    let mut pager = Pager::new(p);
    store::scan(store, ws, collection, p.after.clone(), |id, doc| {
        if keep(doc) {
            pager.offer(id, || doc.clone())
        } else {
            ControlFlow::Continue(())
        }
    })
    .await?;
    Ok(pager.finish())
}

/// Cuts one page from items offered in key order: past the token, past `offset`, `limit`
/// items, and whether one more follows.
struct Pager<'a> {
    params: &'a PageParams,
    skip: usize,
    page: Vec<Value>,
    last: Option<String>,
    more: bool,
}

impl<'a> Pager<'a> {
    fn new(params: &'a PageParams) -> Pager<'a> {
        Pager {
            params,
            skip: params.offset,
            page: Vec::with_capacity(params.limit.min(16)),
            last: None,
            more: false,
        }
    }

    /// Take the item `key` (its document made only when served); `Break` once the page is
    /// full and one more item was seen.
    fn offer(&mut self, key: &str, doc: impl FnOnce() -> Value) -> ControlFlow<()> {
        if self
            .params
            .after
            .as_deref()
            .is_some_and(|after| key <= after)
        {
            return ControlFlow::Continue(());
        }
        if self.skip > 0 {
            self.skip -= 1;
            return ControlFlow::Continue(());
        }
        if self.page.len() == self.params.limit {
            self.more = true;
            return ControlFlow::Break(());
        }
        self.page.push(doc());
        self.last = Some(key.to_owned());
        ControlFlow::Continue(())
    }

    /// `{"items": [...], "nextToken": ...}`.
    fn finish(self) -> Value {
        let next = match (self.more, self.last) {
            (true, Some(last)) => Value::String(encode_token(&last)),
            _ => Value::Null,
        };
        json!({"items": self.page, "nextToken": next})
    }
}

fn encode_token(key: &str) -> String {
    let mut out = String::with_capacity(2 + key.len() * 2);
    out.push_str("p1");
    for b in key.bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn decode_token(token: &str) -> Option<String> {
    let hex = token.strip_prefix("p1")?;
    if hex.len() % 2 != 0 || hex.len() > 2048 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// The body as a JSON object (400 when missing, malformed or not an object).
pub fn body_object(cx: &Ctx) -> Result<Map<String, Value>, ApiError> {
    if cx.body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid("a JSON object body is required"));
    }
    match serde_json::from_slice::<Value>(&cx.body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::invalid("the body must be a JSON object")),
        Err(e) => Err(ApiError::invalid(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

/// For bodies a route ignores: nothing, or any JSON object.
pub fn optional_body(cx: &Ctx) -> Result<(), ApiError> {
    if cx.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    body_object(cx).map(|_| ())
}

/// A string field of a document.
pub fn str_of<'a>(doc: &'a Value, field: &str) -> Option<&'a str> {
    doc.get(field).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<(String, Value)> {
        (0..n).map(|i| (format!("k{i:03}"), json!(i))).collect()
    }

    fn params(q: &str) -> Result<PageParams, ApiError> {
        PageParams::from_query(&Query::parse(Some(q))?)
    }

    #[test]
    fn pages_walk_the_whole_list_once() {
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let q = match &token {
                Some(t) => format!("limit=7&nextToken={t}"),
                None => "limit=7".into(),
            };
            let page = paginate(items(20), &params(&q).unwrap());
            seen.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["nextToken"].as_str() {
                Some(t) => token = Some(t.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, (0..20).map(|i| json!(i)).collect::<Vec<_>>());
        let exact = paginate(items(7), &params("limit=7").unwrap());
        assert_eq!(exact["nextToken"], Value::Null);
        let skipped = paginate(items(20), &params("limit=3&offset=18").unwrap());
        assert_eq!(skipped["items"], json!([18, 19]));
        assert_eq!(skipped["nextToken"], Value::Null);
        let middle = paginate(items(20), &params("limit=3&offset=5").unwrap());
        assert_eq!(middle["items"], json!([5, 6, 7]));
        // The token of an offset page continues after its last item.
        let token = middle["nextToken"].as_str().unwrap().to_owned();
        let next = paginate(
            items(20),
            &params(&format!("limit=3&nextToken={token}")).unwrap(),
        );
        assert_eq!(next["items"], json!([8, 9, 10]));
    }

    /// `page_of` over a store cuts exactly the pages `paginate` cuts from the whole list, with
    /// or without a filter, across chunk boundaries.
    #[tokio::test]
    async fn page_of_cuts_the_pages_paginate_cuts() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::EmbeddedStore::open(dir.path(), Vec::new).unwrap();
        let n = crate::store::SCAN_CHUNK * 2 + 7;
        for (k, v) in items(n) {
            assert!(store.insert("ws", "c", &k, v).await.unwrap());
        }
        let even = |v: &Value| v.as_u64().is_some_and(|i| i % 2 == 0);
        let evens: Vec<(String, Value)> = items(n).into_iter().filter(|(_, v)| even(v)).collect();
        let token = |i: usize| encode_token(&format!("k{i:03}"));
        for q in [
            "limit=7".to_owned(),
            "limit=100&offset=150".to_owned(),
            "limit=3&offset=404".to_owned(),
            format!("limit=100&nextToken={}", token(190)),
            format!("limit=5&nextToken={}", token(n - 3)),
            format!("limit=5&nextToken={}", token(n - 1)),
        ] {
            let p = params(&q).unwrap();
            let all = page_of(&store, "ws", "c", &p, |_| true).await.unwrap();
            assert_eq!(all, paginate(items(n), &p), "{q}");
            let filtered = page_of(&store, "ws", "c", &p, even).await.unwrap();
            assert_eq!(filtered, paginate(evens.clone(), &p), "{q} (even only)");
        }
    }

    #[test]
    fn bad_page_parameters_are_400() {
        for q in [
            "limit=0",
            "limit=101",
            "limit=abc",
            "limit=-1",
            "nextToken=zz",
            "nextToken=p1f",
            "nextToken=p1ff",
            "limit=5&limit=6",
            "offset=-1",
            "offset=10001",
            "offset=2&nextToken=p16b",
        ] {
            assert_eq!(
                params(q).err().map(|e| e.code()),
                Some("validation/invalid_input"),
                "{q}"
            );
        }
        assert!(params("").is_ok());
        assert!(params("limit=100").is_ok());
    }
}
