//! Normalisation before matching: repeated percent-decoding, `+` as space, `\uXXXX` / `\xHH`
//! escapes, HTML character references, overlong UTF-8 and NUL bytes — so an encoding cannot
//! hide a payload. Never panics on malformed input; unchanged input is not copied.

use std::borrow::Cow;

/// Rounds of decoding (until the value stops changing, at most this many).
const MAX_ROUNDS: usize = 4;

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One round of percent-decoding (`%HH`, IIS-style `%uHHHH`), `+` as space when asked.
fn percent_once(input: &[u8], plus: bool) -> Option<Vec<u8>> {
    if !input.iter().any(|b| *b == b'%' || (plus && *b == b'+')) {
        return None;
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'%' {
            if let (Some(h), Some(l)) = (
                input.get(i + 1).copied().and_then(hex),
                input.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
            if matches!(input.get(i + 1), Some(b'u' | b'U')) {
                let digits: Option<Vec<u8>> = (2..6)
                    .map(|k| input.get(i + k).copied().and_then(hex))
                    .collect();
                if let Some(d) = digits {
                    let cp = d.iter().fold(0u32, |acc, x| acc << 4 | u32::from(*x));
                    push_char(&mut out, cp);
                    i += 6;
                    continue;
                }
            }
        } else if plus && b == b'+' {
            out.push(b' ');
            i += 1;
            continue;
        }
        out.push(b);
        i += 1;
    }
    (out != input).then_some(out)
}

fn push_char(out: &mut Vec<u8>, cp: u32) {
    // Full-width ASCII (U+FF01..U+FF5E) folds to ASCII: a classic filter bypass.
    let cp = if (0xFF01..=0xFF5E).contains(&cp) {
        cp - 0xFEE0
    } else {
        cp
    };
    match char::from_u32(cp) {
        Some(c) => {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
        None => out.push(b'?'),
    }
}

/// `\uXXXX`, `\xHH`, `&#NN;`, `&#xHH;` and a few named references; overlong UTF-8; NULs.
fn escapes_once(input: &[u8]) -> Option<Vec<u8>> {
    if !input
        .iter()
        .any(|b| matches!(b, b'\\' | b'&' | 0 | 0xC0 | 0xC1 | 0xE0 | 0xEF))
    {
        return None;
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        match b {
            0 => {
                i += 1;
                continue;
            }
            b'\\' => {
                if matches!(input.get(i + 1), Some(b'u')) {
                    let digits: Option<Vec<u8>> = (2..6)
                        .map(|k| input.get(i + k).copied().and_then(hex))
                        .collect();
                    if let Some(d) = digits {
                        let cp = d.iter().fold(0u32, |acc, x| acc << 4 | u32::from(*x));
                        push_char(&mut out, cp);
                        i += 6;
                        continue;
                    }
                }
                if matches!(input.get(i + 1), Some(b'x'))
                    && let (Some(h), Some(l)) = (
                        input.get(i + 2).copied().and_then(hex),
                        input.get(i + 3).copied().and_then(hex),
                    )
                {
                    out.push(h << 4 | l);
                    i += 4;
                    continue;
                }
            }
            b'&' => {
                if let Some((decoded, used)) = html_reference(&input[i..]) {
                    push_char(&mut out, decoded);
                    i += used;
                    continue;
                }
            }
            // Overlong two-byte forms of ASCII (`%c0%ae` is '.').
            0xC0 | 0xC1 => {
                if let Some(next) = input.get(i + 1).filter(|n| *n & 0xC0 == 0x80) {
                    out.push(((b & 0x1F) << 6) | (next & 0x3F));
                    i += 2;
                    continue;
                }
            }
            // Overlong three-byte forms of ASCII.
            0xE0 => {
                if let (Some(n1), Some(n2)) = (input.get(i + 1), input.get(i + 2))
                    && (*n1 == 0x80 || *n1 == 0x81)
                    && *n2 & 0xC0 == 0x80
                {
                    out.push(((n1 & 1) << 6) | (n2 & 0x3F));
                    i += 3;
                    continue;
                }
            }
            // Full-width ASCII (U+FF01..U+FF5E) folds to ASCII.
            0xEF => {
                if let (Some(n1), Some(n2)) = (input.get(i + 1), input.get(i + 2))
                    && *n1 & 0xC0 == 0x80
                    && *n2 & 0xC0 == 0x80
                {
                    let cp = (u32::from(b & 0x0F) << 12)
                        | (u32::from(n1 & 0x3F) << 6)
                        | u32::from(n2 & 0x3F);
                    if (0xFF01..=0xFF5E).contains(&cp) {
                        out.push((cp - 0xFEE0) as u8);
                        i += 3;
                        continue;
                    }
                }
            }
            _ => {}
        }
        out.push(b);
        i += 1;
    }
    (out != input).then_some(out)
}

/// An HTML character reference at the start of `s`: (code point, bytes used).
fn html_reference(s: &[u8]) -> Option<(u32, usize)> {
    let end = s.iter().take(12).position(|b| *b == b';');
    if s.get(1) == Some(&b'#') {
        let (digits, radix, start) = match s.get(2) {
            Some(b'x' | b'X') => (&s[3..], 16, 3),
            _ => (&s[2..], 10, 2),
        };
        let len = digits
            .iter()
            .take_while(|b| (*b).is_ascii_hexdigit() && (radix == 16 || b.is_ascii_digit()))
            .take(8)
            .count();
        if len == 0 {
            return None;
        }
        let text = std::str::from_utf8(&digits[..len]).ok()?;
        let cp = u32::from_str_radix(text, radix).ok()?;
        let used = start + len + usize::from(digits.get(len) == Some(&b';'));
        return Some((cp, used));
    }
    let end = end?;
    let name = &s[1..end];
    let cp = match name.to_ascii_lowercase().as_slice() {
        b"lt" => '<',
        b"gt" => '>',
        b"quot" => '"',
        b"apos" => '\'',
        b"amp" => '&',
        b"colon" => ':',
        b"lpar" => '(',
        b"rpar" => ')',
        b"sol" => '/',
        b"tab" => '\t',
        b"newline" => '\n',
        _ => return None,
    };
    Some((cp as u32, end + 1))
}

/// The value as an attacker meant it: decoded until stable (at most [`MAX_ROUNDS`] rounds).
pub fn normalize(raw: &[u8], plus_as_space: bool) -> Cow<'_, [u8]> {
    let mut current: Cow<'_, [u8]> = Cow::Borrowed(raw);
    for round in 0..MAX_ROUNDS {
        let mut changed = false;
        // `+` means space only in the first round (a decoded `%2B` is a literal plus).
        if let Some(next) = percent_once(&current, plus_as_space && round == 0) {
            current = Cow::Owned(next);
            changed = true;
        }
        if let Some(next) = escapes_once(&current) {
            current = Cow::Owned(next);
            changed = true;
        }
        if !changed {
            break;
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        String::from_utf8_lossy(&normalize(s.as_bytes(), true)).into_owned()
    }

    #[test]
    fn percent_encoding_is_undone_repeatedly() {
        assert_eq!(n("%3Cscript%3E"), "<script>");
        assert_eq!(n("%253Cscript%253E"), "<script>");
        assert_eq!(n("%25253Cscript%25253E"), "<script>");
        assert_eq!(n("a+b"), "a b");
        assert_eq!(n("a%2Bb"), "a+b");
        assert_eq!(n("%u003Cscript"), "<script");
    }

    #[test]
    fn escapes_overlong_utf8_and_nul_are_normalised() {
        assert_eq!(n("\\u003cscript\\u003e"), "<script>");
        assert_eq!(n("\\x3cscript"), "<script");
        assert_eq!(n("&#60;script&#x3e;"), "<script>");
        assert_eq!(n("&lt;img&gt;"), "<img>");
        assert_eq!(n("java&Tab;script&colon;"), "java\tscript:");
        assert_eq!(n("%c0%ae%c0%ae%c0%af"), "../");
        assert_eq!(n("sel%00ect"), "select");
        assert_eq!(n("%EF%BC%9Cscript"), "<script");
    }

    #[test]
    fn malformed_input_does_not_panic_and_plain_input_is_not_copied() {
        for s in [
            "%",
            "%Z",
            "%u12",
            "\\u12",
            "&#",
            "&#x;",
            "&;",
            "\u{00e9}\u{00c0}",
        ] {
            let _ = n(s);
        }
        let _ = normalize(&[0xC0], false);
        let _ = normalize(&[0xE0, 0x80], false);
        assert!(matches!(normalize(b"plain text", true), Cow::Borrowed(_)));
    }
}
