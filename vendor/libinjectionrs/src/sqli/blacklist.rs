// SQL injection blacklist checker - matches C implementation exactly

use super::sqli_data;

/// Check if a fingerprint is blacklisted
/// This matches libinjection_sqli_blacklist from the C version
pub fn is_blacklisted(fingerprint: &str) -> bool {
    // Match the C version: convert v0 fingerprint to v1 format
    // v0: up to 5 chars, mixed case  
    // v1: '0' prefix, up to 5 more chars, upper case
    
    if fingerprint.is_empty() {
        return false;
    }
    
    // Build the v1 fingerprint: '0' prefix, upper case.
    // PATCH (cedargate): in a stack buffer (was a `String` per call); `lookup_word`
    // upper-cases anyway.
    let fp = fingerprint.as_bytes();
    let mut buf = [0u8; 16];
    if fp.len() + 1 > buf.len() {
        return false;
    }
    buf[0] = b'0';
    buf[1..=fp.len()].copy_from_slice(fp);
    let Ok(fp2) = core::str::from_utf8(&buf[..=fp.len()]) else {
        return false;
    };

    // Check if this fingerprint exists in the keywords table with type 'F'
    sqli_data::lookup_word(fp2) == crate::sqli::TokenType::Fingerprint
}
