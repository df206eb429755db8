//! Stage 1: the request id. A well-formed inbound `X-Request-Id` is kept (so a caller can
//! follow its request through), anything else is replaced by a fresh UUID.

/// The header carrying the request id, in and out.
pub const HEADER: &str = "x-request-id";

/// Longest inbound id accepted.
const MAX_LEN: usize = 128;

/// Keep a well-formed inbound id (1-128 of `A-Z a-z 0-9 . _ : -`), else make one.
pub fn accept_or_generate(inbound: Option<&[u8]>) -> String {
    match inbound {
        Some(v) if is_well_formed(v) => String::from_utf8_lossy(v).into_owned(),
        // A v4 UUID from the thread's CSPRNG (rand's ThreadRng, seeded by the OS), not one
        // `getrandom` system call per request as `Uuid::new_v4` makes.
        _ => uuid::Builder::from_random_bytes(rand::random())
            .into_uuid()
            .to_string(),
    }
}

fn is_well_formed(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= MAX_LEN
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_good_ids_and_replaces_bad_ones() {
        assert_eq!(accept_or_generate(Some(b"abc-123")), "abc-123");
        for bad in [
            &b""[..],
            b"has space",
            b"new\nline",
            &[b'a'; 129][..],
            b"<script>",
        ] {
            let id = accept_or_generate(Some(bad));
            assert_ne!(id.as_bytes(), bad);
            assert_eq!(id.len(), 36);
        }
        let id = uuid::Uuid::parse_str(&accept_or_generate(None)).expect("a UUID");
        assert_eq!(id.get_version(), Some(uuid::Version::Random));
        assert_ne!(accept_or_generate(None), accept_or_generate(None));
    }
}
