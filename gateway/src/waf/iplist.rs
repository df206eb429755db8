//! CIDR sets (IPv4 and IPv6) for IP reputation and trusted proxies, and the client address.
//!
//! A set is a sorted list of merged ranges over one 128-bit space (IPv4 as IPv4-mapped IPv6),
//! so a lookup is one binary search whatever the list's size.

use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

/// A set of addresses given as CIDR blocks or single addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    /// Disjoint, sorted, inclusive ranges.
    ranges: Vec<(u128, u128)>,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// `192.0.2.0/24`, `2001:db8::/32`, or one address. The error says what is wrong.
pub fn parse_cidr(text: &str) -> Result<(u128, u128), String> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let ip: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not an IP address or CIDR block"))?;
    let (bits, max) = match ip {
        IpAddr::V4(_) => (96u32, 32u32),
        IpAddr::V6(_) => (0, 128),
    };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("`{text}`: the prefix length must be 0..={max}"))?,
    };
    let total = bits + prefix;
    let start = to_u128(ip);
    let host_mask = if total >= 128 { 0 } else { u128::MAX >> total };
    Ok((start & !host_mask, start | host_mask))
}

impl IpSet {
    /// A set from CIDR blocks.
    pub fn from_cidrs<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<IpSet, String> {
        let mut ranges = items
            .into_iter()
            .map(parse_cidr)
            .collect::<Result<Vec<_>, _>>()?;
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Ok(IpSet { ranges: merged })
    }

    /// A set from a file: one CIDR block or address per line; `#` starts a comment.
    /// Errors name the file and line.
    pub fn load(path: &Path) -> Result<IpSet, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut items = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            parse_cidr(line).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
            items.push(line);
        }
        IpSet::from_cidrs(items)
    }

    /// Whether the set holds `ip` (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let x = to_u128(ip);
        let i = self.ranges.partition_point(|(lo, _)| *lo <= x);
        i > 0 && self.ranges[i - 1].1 >= x
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of merged ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }
}

/// The client's address: the peer, or — only when the peer is a trusted proxy — the nearest
/// address in `X-Forwarded-For` that is not itself a trusted proxy (read from the right, so a
/// client cannot choose its address by sending its own header). An unparsable entry stops the
/// walk at the last trusted hop.
pub fn client_ip<'a>(
    peer: IpAddr,
    trusted: &IpSet,
    forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>,
) -> IpAddr {
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let mut current = peer;
    for header in forwarded_for.rev() {
        let Ok(text) = std::str::from_utf8(header) else {
            return current;
        };
        for entry in text.rsplit(',') {
            let Some(ip) = parse_forwarded_entry(entry.trim()) else {
                return current;
            };
            current = ip;
            if !trusted.contains(ip) {
                return ip;
            }
        }
    }
    current
}

/// An `X-Forwarded-For` entry: an address, possibly `[v6]:port` or `v4:port`.
fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        return rest
            .split(']')
            .next()?
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6);
    }
    entry
        .rsplit_once(':')?
        .0
        .parse::<std::net::Ipv4Addr>()
        .ok()
        .map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_sets_hold_v4_and_v6() {
        let set = IpSet::from_cidrs(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]).unwrap();
        assert!(set.contains(ip("10.1.2.3")));
        assert!(set.contains(ip("::ffff:10.1.2.3")));
        assert!(!set.contains(ip("11.0.0.0")));
        assert!(set.contains(ip("192.0.2.7")));
        assert!(!set.contains(ip("192.0.2.8")));
        assert!(set.contains(ip("2001:db8:ffff::1")));
        assert!(!set.contains(ip("2001:db9::1")));
        let all = IpSet::from_cidrs(["0.0.0.0/0"]).unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        assert!(!all.contains(ip("2001:db8::1")));
    }

    #[test]
    fn overlapping_blocks_merge() {
        let set = IpSet::from_cidrs(["10.0.0.0/9", "10.128.0.0/9", "10.0.0.0/24"]).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.contains(ip("10.255.255.255")));
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        assert!(IpSet::from_cidrs(["10.0.0.0/33"]).is_err());
        assert!(IpSet::from_cidrs(["banana"]).is_err());
        assert!(IpSet::from_cidrs(["2001:db8::/129"]).is_err());
    }

    #[test]
    fn forwarded_for_is_read_only_behind_trusted_proxies() {
        let trusted = IpSet::from_cidrs(["10.0.0.0/8"]).unwrap();
        let xff: [&[u8]; 1] = [b"203.0.113.5, 10.0.0.2"];
        // Not a trusted peer: the header is ignored.
        assert_eq!(
            client_ip(ip("198.51.100.1"), &trusted, xff.into_iter()),
            ip("198.51.100.1")
        );
        // A trusted peer: the nearest untrusted entry, from the right.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, xff.into_iter()),
            ip("203.0.113.5")
        );
        // A client-supplied entry to the left of the real one changes nothing.
        let spoofed: [&[u8]; 1] = [b"1.2.3.4, 203.0.113.5"];
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, spoofed.into_iter()),
            ip("203.0.113.5")
        );
        // Garbage stops at the last trusted hop.
        let garbage: [&[u8]; 1] = [b"nonsense"];
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, garbage.into_iter()),
            ip("10.0.0.1")
        );
        let ported: [&[u8]; 2] = [b"[2001:db8::7]:443", b"192.0.2.1:8080"];
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, ported.into_iter()),
            ip("192.0.2.1")
        );
    }
}
