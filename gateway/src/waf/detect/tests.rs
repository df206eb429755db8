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
