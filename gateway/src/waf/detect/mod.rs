//! Attack detection on one request: every field (path segments, query names and values,
//! inspected headers, cookies, JSON keys and string values, form fields, raw body text) is
//! normalised (`decode`) and checked (`rules`). The only state kept between requests is the
//! table of values found clean (`clean`), which never changes an answer.

mod clean;
mod decode;
mod json;
mod literals;
mod rules;

use std::borrow::Cow;
use std::fmt::Write as _;

use clean::{Class, CleanValues};
pub use decode::normalize;
use json::Json;

/// Which part of the request a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Path,
    QueryName,
    QueryValue,
    Header,
    Cookie,
    BodyKey,
    BodyValue,
    /// Body text that is neither JSON nor a form (or JSON cut off by the inspection limit).
    Body,
}

impl Part {
    /// The label used in logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Part::Path => "path",
            Part::QueryName | Part::QueryValue => "query",
            Part::Header => "header",
            Part::Cookie => "cookie",
            Part::BodyKey | Part::BodyValue | Part::Body => "body",
        }
    }
}

/// A detection rule; `id()` goes into 403 bodies, logs, metrics and the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    Sqli,
    Xss,
    PathTraversal,
    CommandInjection,
    JavascriptUrl,
    TemplateInjection,
    SqlCopyProgram,
    /// CR/LF injection, smuggled request lines.
    ProtocolAttack,
    /// A `Content-Type` charset other than UTF-8, ISO-8859-1 or ASCII (e.g. `ibm037`, EBCDIC,
    /// which hides a payload from every other rule), or more than one.
    Charset,
}

impl Rule {
    /// Every rule.
    pub const ALL: &'static [Rule] = &[
        Rule::Sqli,
        Rule::Xss,
        Rule::PathTraversal,
        Rule::CommandInjection,
        Rule::JavascriptUrl,
        Rule::TemplateInjection,
        Rule::SqlCopyProgram,
        Rule::ProtocolAttack,
        Rule::Charset,
    ];

    /// The stable id.
    pub fn id(&self) -> &'static str {
        match self {
            Rule::Sqli => "sqli",
            Rule::Xss => "xss",
            Rule::PathTraversal => "path-traversal",
            Rule::CommandInjection => "command-injection",
            Rule::JavascriptUrl => "javascript-url",
            Rule::TemplateInjection => "template-injection",
            Rule::SqlCopyProgram => "sql-copy-program",
            Rule::ProtocolAttack => "protocol-attack",
            Rule::Charset => "charset",
        }
    }

    /// The rule with this id.
    pub fn from_id(id: &str) -> Option<Rule> {
        Rule::ALL.iter().copied().find(|r| r.id() == id)
    }
}

/// The request as received (raw, still percent-encoded).
pub struct RequestView<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Only the headers to inspect (never Authorization), lower-case names; `cookie` entries
    /// are split into cookies.
    pub headers: &'a [(&'a str, &'a [u8])],
    pub content_type: Option<&'a str>,
    /// The inspected head of the body.
    pub body: &'a [u8],
    /// `body` is only the head of a longer body.
    pub body_truncated: bool,
}

/// One detection: rule, where, and the field's name (never the payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub rule: Rule,
    pub part: Part,
    pub name: String,
}

/// Headers inspected by default: `*`, every header but the credentials in
/// [`NEVER_INSPECTED`] (CRS inspects every header too; attacks arrive in `User-Agent`,
/// `Referer`, cookies and custom headers alike).
pub const DEFAULT_INSPECTED_HEADERS: &[&str] = &["*"];

/// Never pattern-matched: the bearer token is verified, not scanned, and never logged.
pub const NEVER_INSPECTED: &[&str] = &["authorization", "proxy-authorization"];

/// Whether `name` (lower-case) is inspected under the configured list.
pub fn inspects(configured: &[impl AsRef<str>], name: &str) -> bool {
    !NEVER_INSPECTED.contains(&name)
        && configured
            .iter()
            .any(|c| c.as_ref() == "*" || c.as_ref() == name)
}

/// JSON nesting inspected at most (deeper structure is scanned as text).
const MAX_DEPTH: usize = 64;

/// The detector: compiled rules, shared by every request, and the values found clean.
#[derive(Debug, Default)]
pub struct Detector {
    clean: Option<CleanValues>,
}

/// A field's name as given to `skip` and in hits, worked out only when needed.
#[derive(Clone, Copy)]
enum Name<'a> {
    Text(&'a str),
    /// Still encoded, as in a query string or a cookie header.
    Raw(&'a [u8], bool),
}

impl Name<'_> {
    fn text(&self) -> Cow<'_, str> {
        match self {
            Name::Text(s) => Cow::Borrowed(s),
            Name::Raw(raw, plus) => {
                Cow::Owned(String::from_utf8_lossy(&normalize(raw, *plus)).into_owned())
            }
        }
    }
}

struct Scan<'s> {
    clean: Option<&'s CleanValues>,
    skip: &'s dyn Fn(Rule, Part, &str) -> bool,
    on_hit: &'s mut dyn FnMut(Hit) -> bool,
    found: Vec<Rule>,
    /// The folded value, reused from value to value.
    folded: Vec<u8>,
    stopped: bool,
}

impl Scan<'_> {
    /// Report `rule` for a field unless excluded; `false` once the caller asked to stop.
    fn report(&mut self, rule: Rule, part: Part, name: &str) -> bool {
        if self.stopped {
            return false;
        }
        if !(self.skip)(rule, part, name)
            && !(self.on_hit)(Hit {
                rule,
                part,
                name: name.to_string(),
            })
        {
            self.stopped = true;
        }
        !self.stopped
    }

    /// Check one value; `false` once the caller asked to stop.
    fn value(&mut self, part: Part, name: Name<'_>, raw: &[u8], plus: bool) -> bool {
        if self.stopped {
            return false;
        }
        // Line breaks have no business in these (query values may carry text areas).
        let line_field = matches!(
            part,
            Part::Path | Part::QueryName | Part::Cookie | Part::Header
        );
        // Cookie and body values are too often one-off (sessions, prose) to be worth keeping.
        let remembered = matches!(
            part,
            Part::Path | Part::QueryName | Part::QueryValue | Part::Header | Part::BodyKey
        ) && raw.len() <= clean::MAX_VALUE;
        let key = match self.clean {
            Some(clean) if remembered => {
                let class = Class::new(part == Part::Header, line_field, part == Part::Path, plus);
                let key = clean.key(class, raw);
                if clean.contains(key) {
                    return true;
                }
                Some((clean, key))
            }
            _ => None,
        };
        let value = normalize(raw, plus);
        let mut found = std::mem::take(&mut self.found);
        rules::check_in(
            &value,
            part == Part::Header,
            line_field,
            &mut found,
            &mut self.folded,
        );
        // A NUL byte (dropped by the normalisation) has no place in these: it truncates
        // strings in C-based backends (`file.php%00.jpg`).
        if (line_field || part == Part::QueryValue)
            && !found.contains(&Rule::ProtocolAttack)
            && has_nul(raw)
        {
            found.push(Rule::ProtocolAttack);
        }
        if part == Part::Path
            && !found.contains(&Rule::PathTraversal)
            && rules::restricted_file(&value, &mut self.folded)
        {
            found.push(Rule::PathTraversal);
        }
        if found.is_empty()
            && let Some((clean, key)) = key
        {
            clean.insert(key);
        }
        let name = if found.is_empty() {
            Cow::Borrowed("")
        } else {
            name.text()
        };
        for rule in found.iter().copied() {
            if !self.report(rule, part, &name) {
                break;
            }
        }
        self.found = found;
        !self.stopped
    }

    fn pairs(&mut self, text: &[u8], sep: u8, names: Part, values: Part) {
        for pair in text.split(|b| *b == sep) {
            let pair = trim(pair);
            if pair.is_empty() {
                continue;
            }
            let (k, v) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &[][..]),
            };
            let plus = sep == b'&';
            let name = Name::Raw(k, plus);
            if !self.value(names, name, k, plus) || !self.value(values, name, v, plus) {
                return;
            }
        }
    }

    fn json(&mut self, v: &Json<'_>, path: &mut String, depth: usize) {
        if self.stopped || depth > MAX_DEPTH {
            return;
        }
        match v {
            Json::Str(s) => {
                self.value(Part::BodyValue, Name::Text(path), s.as_bytes(), false);
            }
            Json::Arr(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    let _ = write!(path, "[{i}]");
                    self.json(item, path, depth + 1);
                    path.truncate(len);
                }
            }
            Json::Obj(entries) => {
                for (k, item) in entries {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                    if !self.value(Part::BodyKey, Name::Text(path), k.as_bytes(), false) {
                        return;
                    }
                    self.json(item, path, depth + 1);
                    path.truncate(len);
                }
            }
            Json::Other => {}
        }
    }
}

/// A NUL byte, raw or percent-encoded (once or twice).
fn has_nul(raw: &[u8]) -> bool {
    raw.contains(&0)
        || raw
            .windows(3)
            .any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
        || raw.windows(5).any(|w| w.eq_ignore_ascii_case(b"%2500"))
}

/// Charsets a body may declare: what the backend reads (UTF-8) and what is a subset of it or
/// decodes byte for byte.
const CHARSETS: &[&str] = &["utf-8", "utf8", "iso-8859-1", "latin1", "us-ascii", "ascii"];

/// Whether a `Content-Type` declares a charset outside [`CHARSETS`], or more than one.
fn foreign_charset(content_type: &str) -> bool {
    let mut declared = content_type
        .split(';')
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
        .map(|(_, v)| v.trim().trim_matches(|c| c == '"' || c == '\'').trim());
    match (declared.next(), declared.next()) {
        (None, _) => false,
        (Some(one), None) => !CHARSETS.iter().any(|c| one.eq_ignore_ascii_case(c)),
        (Some(_), Some(_)) => true,
    }
}

/// A `boundary` on a type that is not multipart, naming another media type
/// (`application/x-www-form-urlencoded;boundary="application/json"`): a parser confusion to
/// make the backend read the body as something the WAF did not.
fn smuggled_media_type(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    let main = parts.next().unwrap_or("").trim();
    !main.to_ascii_lowercase().starts_with("multipart/")
        && parts
            .filter_map(|p| p.split_once('='))
            .any(|(k, v)| k.trim().eq_ignore_ascii_case("boundary") && v.contains('/'))
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end.max(start)]
}

/// `k=v&k2=v2` with no spaces around: a form body sent without a content type.
fn looks_like_form(body: &[u8]) -> bool {
    !body.is_empty()
        && body.contains(&b'=')
        && !body.iter().any(|b| *b == b'\n' || *b == b'{' || *b == b'<')
        && body.split(|b| *b == b'&').all(|p| {
            p.iter()
                .position(|b| *b == b'=')
                .is_some_and(|i| i > 0 && !p[..i].contains(&b' '))
        })
}

impl Detector {
    /// The detector, its rules compiled, remembering values found clean.
    pub fn new() -> Detector {
        rules::compile_all();
        Detector {
            clean: Some(CleanValues::new()),
        }
    }

    /// The detector, its rules compiled on first use (detection turned off).
    pub fn lazy() -> Detector {
        Detector { clean: None }
    }

    /// The detector scanning every value every time: what detection itself costs.
    pub fn uncached() -> Detector {
        rules::compile_all();
        Detector { clean: None }
    }

    /// Scan every field of the request; see [`RequestView`]. `skip` excludes a rule for a
    /// field; `on_hit` returns `false` to stop.
    pub fn scan(
        &self,
        req: &RequestView<'_>,
        skip: &dyn Fn(Rule, Part, &str) -> bool,
        on_hit: &mut dyn FnMut(Hit) -> bool,
    ) {
        let mut scan = Scan {
            clean: self.clean.as_ref(),
            skip,
            on_hit,
            found: Vec::new(),
            folded: Vec::new(),
            stopped: false,
        };
        for segment in req.path.split('/').filter(|s| !s.is_empty()) {
            if !scan.value(Part::Path, Name::Text(""), segment.as_bytes(), false) {
                return;
            }
        }
        if let Some(q) = req.query {
            scan.pairs(q.as_bytes(), b'&', Part::QueryName, Part::QueryValue);
        }
        if req.content_type.is_some_and(foreign_charset)
            && !scan.report(Rule::Charset, Part::Header, "content-type")
        {
            return;
        }
        if req.content_type.is_some_and(smuggled_media_type)
            && !scan.report(Rule::ProtocolAttack, Part::Header, "content-type")
        {
            return;
        }
        for (name, value) in req.headers {
            if scan.stopped {
                return;
            }
            if *name == "cookie" {
                scan.pairs(value, b';', Part::Cookie, Part::Cookie);
            } else {
                scan.value(Part::Header, Name::Text(name), value, false);
            }
        }
        if scan.stopped || req.body.is_empty() {
            return;
        }
        let ct = req.content_type.unwrap_or("").to_ascii_lowercase();
        let body = trim(req.body);
        let json_like =
            ct.contains("json") || body.first().is_some_and(|b| *b == b'{' || *b == b'[');
        if json_like
            && !req.body_truncated
            && let Ok(v) = serde_json::from_slice::<Json<'_>>(body)
        {
            scan.json(&v, &mut String::new(), 0);
            return;
        }
        if ct.contains("x-www-form-urlencoded") || (ct.is_empty() && looks_like_form(body)) {
            scan.pairs(body, b'&', Part::BodyKey, Part::BodyValue);
            return;
        }
        // Anything else (and JSON cut off at the limit) is text, scanned line by line so one
        // long body is not one huge value.
        let text: Cow<'_, [u8]> = Cow::Borrowed(body);
        // Without a content type the body is form-like text: `+` is a space there.
        let plus = ct.is_empty();
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if !scan.value(Part::Body, Name::Text(""), line, plus) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
