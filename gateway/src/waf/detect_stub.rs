//! temporary stub
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Path,
    QueryName,
    QueryValue,
    Header,
    Cookie,
    BodyKey,
    BodyValue,
    Body,
}
impl Part {
    pub fn as_str(&self) -> &'static str {
        "x"
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    Sqli,
    Xss,
}
impl Rule {
    pub fn id(&self) -> &'static str {
        "sqli"
    }
    pub fn from_id(_id: &str) -> Option<Rule> {
        None
    }
    pub const ALL: &'static [Rule] = &[Rule::Sqli, Rule::Xss];
}
pub struct RequestView<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a [(&'a str, &'a [u8])],
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
    pub body_truncated: bool,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub rule: Rule,
    pub part: Part,
    pub name: String,
}
pub struct Detector;
impl Detector {
    pub fn new() -> Detector {
        Detector
    }
    pub fn scan(
        &self,
        _req: &RequestView<'_>,
        _skip: &dyn Fn(Rule, Part, &str) -> bool,
        _on_hit: &mut dyn FnMut(Hit) -> bool,
    ) {
    }
}
pub const DEFAULT_INSPECTED_HEADERS: &[&str] = &["user-agent"];
