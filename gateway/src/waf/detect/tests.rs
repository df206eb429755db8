use super::*;

fn hits(req: &RequestView<'_>) -> Vec<Hit> {
    let mut out = Vec::new();
    Detector::new().scan(req, &|_, _, _| false, &mut |h| {
        out.push(h);
        true
    });
    out
}

fn view<'a>(
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a [(&'a str, &'a [u8])],
    ct: Option<&'a str>,
    body: &'a [u8],
) -> RequestView<'a> {
    RequestView {
        path,
        query,
        headers,
        content_type: ct,
        body,
        body_truncated: false,
    }
}

#[test]
fn fields_are_named_where_the_payload_sits() {
    let h = hits(&view(
        "/a",
        Some("q=%27%20OR%20%271%27%3D%271"),
        &[],
        None,
        b"",
    ));
    assert_eq!(
        h[0],
        Hit {
            rule: Rule::Sqli,
            part: Part::QueryValue,
            name: "q".into()
        }
    );
    let headers: [(&str, &[u8]); 1] = [("cookie", b"a=1; prefs=<script>alert(1)</script>")];
    let h = hits(&view("/a", None, &headers, None, b""));
    assert_eq!((h[0].part, h[0].name.as_str()), (Part::Cookie, "prefs"));
    let body = br#"{"items":[{"title":"ok"},{"title":"<img src=x onerror=alert(1)>"}]}"#;
    let h = hits(&view("/a", None, &[], Some("application/json"), body));
    assert_eq!(
        (h[0].rule, h[0].part, h[0].name.as_str()),
        (Rule::Xss, Part::BodyValue, "items[1].title")
    );
    let h = hits(&view(
        "/a",
        None,
        &[],
        None,
        b"name=x&cmd=%3Bcat+%2Fetc%2Fpasswd",
    ));
    assert_eq!((h[0].part, h[0].name.as_str()), (Part::BodyValue, "cmd"));
    // JSON `\u` escapes do not hide a payload.
    let h = hits(&view(
        "/a",
        None,
        &[],
        Some("application/json"),
        br#"{"x":"\u003cscript\u003ealert(1)\u003c/script\u003e"}"#,
    ));
    assert_eq!(h[0].rule, Rule::Xss);
}

#[test]
fn exclusions_and_stopping_are_honoured() {
    let body = br#"{"body":"SELECT name FROM users WHERE id = 1 OR 1=1","title":"1' OR '1'='1"}"#;
    let mut seen = Vec::new();
    Detector::new().scan(
        &view("/a", None, &[], Some("application/json"), body),
        &|rule, part, name| rule == Rule::Sqli && part == Part::BodyValue && name == "body",
        &mut |h| {
            seen.push(h.name);
            false
        },
    );
    assert_eq!(seen, vec!["title".to_string()]);
}

#[test]
fn benign_requests_pass() {
    let jwt = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJ1LTEiLCJ3b3Jrc3BhY2VJZCI6IndzLWRlbW8ifQ.c2lnbmF0dXJlLWJ5dGVz";
    let cookie = format!("session={jwt}; theme=dark; lang=en-GB");
    let headers: [(&str, &[u8]); 3] = [
        ("cookie", cookie.as_bytes()),
        ("user-agent", b"Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15"),
        ("referer", b"https://app.example.com/lessons/intro?tab=notes&sort=-createdAt"),
    ];
    let body = br#"{"name":"O'Brien's onboarding","description":"Select a union rep, then drop by -- it's fun!","tags":["sql","security"],"points":50,"steps":[{"text":"Read **chapter 1** and [the FAQ](https://example.com/faq?a=1&b=2)"}]}"#;
    let h = hits(&view(
        "/app/v1/workspaces/ws-demo/missions/V1StGXR8_Z5jdHi6B-myT",
        Some("limit=20&nextToken=eyJrIjoibTEifQ%3D%3D&sort=-points"),
        &headers,
        Some("application/json"),
        body,
    ));
    assert!(h.is_empty(), "{h:?}");
}

/// No input may panic the detector: random bytes, broken encodings, deep JSON, huge runs.
#[test]
fn nothing_panics() {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"%uU\\x&#;<>'\"()=+-/*.0123456789abcdefABCDEF{}[]$`|\n\r\t \xc0\xc1\xe0\xef\xbc\x80\xff\x00";
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for _ in 0..400 {
        let len = (next() % 200) as usize;
        inputs.push(
            (0..len)
                .map(|_| alphabet[(next() as usize) % alphabet.len()])
                .collect(),
        );
        inputs.push((0..len).map(|_| next() as u8).collect());
    }
    inputs.push("[".repeat(2_000).into_bytes());
    inputs.push(format!("{}1{}", "{\"a\":".repeat(300), "}".repeat(300)).into_bytes());
    inputs.push("%".repeat(5_000).into_bytes());
    inputs.push("%25".repeat(2_000).into_bytes());
    inputs.push(vec![0xE0; 2_000]);
    let d = Detector::new();
    for input in &inputs {
        let text = String::from_utf8_lossy(input);
        let result = std::panic::catch_unwind(|| {
            let _ = libinjectionrs::detect_sqli(input);
            let _ = libinjectionrs::detect_xss(input);
            for ct in [
                Some("application/json"),
                Some("application/x-www-form-urlencoded"),
                None,
            ] {
                let headers: [(&str, &[u8]); 2] = [("cookie", input), ("user-agent", input)];
                d.scan(
                    &RequestView {
                        path: &text,
                        query: Some(&text),
                        headers: &headers,
                        content_type: ct,
                        body: input,
                        body_truncated: false,
                    },
                    &|_, _, _| false,
                    &mut |_| true,
                );
            }
        });
        assert!(result.is_ok(), "panicked on {input:?}");
    }
}

/// A `serde_json::Value` kept only the last of duplicate keys; a backend may read the first.
#[test]
fn every_duplicate_json_key_is_scanned() {
    let body = br#"{"note":"<script>alert(1)</script>","note":"fine"}"#;
    let h = hits(&view("/a", None, &[], Some("application/json"), body));
    assert_eq!(
        (h[0].rule, h[0].part, h[0].name.as_str()),
        (Rule::Xss, Part::BodyValue, "note")
    );
}

fn hits_with(
    d: &Detector,
    req: &RequestView<'_>,
    skip: &dyn Fn(Rule, Part, &str) -> bool,
) -> Vec<Hit> {
    let mut out = Vec::new();
    d.scan(req, skip, &mut |h| {
        out.push(h);
        true
    });
    out
}

/// The clean-value memory never lets an attack through: attacks are not remembered, a value
/// clean in one place is scanned afresh in another, and exclusions are applied after it.
#[test]
fn remembered_clean_values_never_hide_an_attack() {
    let d = Detector::new();
    let none = |_: Rule, _: Part, _: &str| false;
    let clean = view("/a/b", Some("q=weekly&limit=20"), &[], None, b"");
    for _ in 0..3 {
        assert!(hits_with(&d, &clean, &none).is_empty());
    }
    let attack = view(
        "/a/b",
        Some("q=weekly&limit=20%27%20OR%20%271%27%3D%271"),
        &[],
        None,
        b"",
    );
    for _ in 0..3 {
        let h = hits_with(&d, &attack, &none);
        assert_eq!(
            (h[0].rule, h[0].part, h[0].name.as_str()),
            (Rule::Sqli, Part::QueryValue, "limit")
        );
    }
    // A line break is fine in a query value, not in a query name: same bytes, scanned again.
    let as_value = view("/a", Some("note=first%0D%0Asecond"), &[], None, b"");
    let value_hits = hits_with(&d, &as_value, &none);
    let as_name = view("/a", Some("first%0D%0Asecond=1"), &[], None, b"");
    let name_hits = hits_with(&d, &as_name, &none);
    assert!(value_hits.is_empty(), "{value_hits:?}");
    assert_eq!(name_hits[0].part, Part::QueryName, "{name_hits:?}");
    // Excluded once (a hit skipped by the caller), blocked once the exclusion is gone.
    let xss = view(
        "/a",
        Some("bio=%3Cscript%3Ealert(1)%3C%2Fscript%3E"),
        &[],
        None,
        b"",
    );
    let excluded = |_: Rule, part: Part, name: &str| part == Part::QueryValue && name == "bio";
    assert!(hits_with(&d, &xss, &excluded).is_empty());
    assert_eq!(hits_with(&d, &xss, &none)[0].rule, Rule::Xss);
    // `+` is a space in a query string, not in a path segment.
    let plus_path = view("/a/1'+OR+'1'='1", None, &[], None, b"");
    let plus_query = view("/a", Some("q=1'+OR+'1'='1"), &[], None, b"");
    assert_eq!(
        hits_with(&d, &plus_query, &none).is_empty(),
        hits_with(&Detector::uncached(), &plus_query, &none).is_empty()
    );
    assert_eq!(
        hits_with(&d, &plus_path, &none).is_empty(),
        hits_with(&Detector::uncached(), &plus_path, &none).is_empty()
    );
}

/// On the WAF corpus' clean and attack samples, remembering gives the same answers as not.
#[test]
fn remembering_gives_the_same_answers() {
    let (d, fresh) = (Detector::new(), Detector::uncached());
    let none = |_: Rule, _: Part, _: &str| false;
    let values = [
        "weekly",
        "20",
        "eyJrIjoibTEifQ%3D%3D",
        "1%27%20OR%201%3D1--",
        "%3Csvg%20onload%3Dalert(1)%3E",
        "..%2F..%2Fetc%2Fpasswd",
        "%7B%7B7*7%7D%7D",
        "javascript:alert(1)",
        "a+b",
        "O'Brien",
    ];
    for _ in 0..2 {
        for v in values {
            for q in [format!("q={v}"), format!("{v}=1")] {
                let path = format!("/a/{v}");
                let req = view(&path, Some(&q), &[], None, b"");
                let ua: [(&str, &[u8]); 1] = [("user-agent", v.as_bytes())];
                let with_header = view("/a", None, &ua, None, b"");
                for r in [&req, &with_header] {
                    assert_eq!(hits_with(&d, r, &none), hits_with(&fresh, r, &none), "{v}");
                }
            }
        }
    }
}

#[test]
fn content_type_charsets_and_smuggled_types_are_refused() {
    let form = b"test=value".as_slice();
    let rules_of = |ct: &str| -> Vec<(Rule, Part)> {
        hits(&view("/a", None, &[], Some(ct), form))
            .into_iter()
            .map(|h| (h.rule, h.part))
            .collect()
    };
    for ct in [
        "application/x-www-form-urlencoded",
        "application/json; charset=utf-8",
        "application/json;charset=\"UTF-8\"",
        "text/plain; charset=iso-8859-1",
        "multipart/form-data; boundary=a/b",
    ] {
        assert!(rules_of(ct).is_empty(), "{ct}: {:?}", rules_of(ct));
    }
    for ct in [
        "application/x-www-form-urlencoded; charset=ibm037",
        "application/x-www-form-urlencoded;charset=\"utf-88\"",
        "application/x-www-form-urlencoded;charset=ibm037;charset=UTF-8",
    ] {
        assert_eq!(rules_of(ct), [(Rule::Charset, Part::Header)], "{ct}");
    }
    assert_eq!(
        rules_of("application/x-www-form-urlencoded;boundary=\"application/json\""),
        [(Rule::ProtocolAttack, Part::Header)]
    );
}

#[test]
fn nul_bytes_are_refused_where_text_never_holds_them() {
    for query in ["a=b%00", "a%00=b", "a=b%2500"] {
        let h = hits(&view("/a", Some(query), &[], None, b""));
        assert!(
            h.iter().any(|h| h.rule == Rule::ProtocolAttack),
            "{query}: {h:?}"
        );
    }
    let headers: [(&str, &[u8]); 1] = [("referer", b"anything%00")];
    let h = hits(&view("/a", None, &headers, None, b""));
    assert!(h.iter().any(|h| h.rule == Rule::ProtocolAttack), "{h:?}");
    assert!(hits(&view("/a", Some("a=100%25"), &[], None, b"")).is_empty());
}
