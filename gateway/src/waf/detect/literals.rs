//! What a rule's regular expression requires of a value, read from its syntax tree: sets of
//! strings such that every match contains at least one string of each set (a conjunction of
//! disjunctions): `\bunion\b[\s(]+…select\b` needs `union`, one of the `[\s(]` characters
//! and `select`. Derived from the patterns themselves, not from a hand-kept list, so a check
//! built on it is exact: it rules a pattern out only when the pattern cannot match.
//!
//! Used for plain values (ids, JWTs, words; see `rules::is_plain`): most SQL rules need a
//! character such values never hold, and the others need a keyword, so one literal search
//! tells whether the SQL rules need to run at all.

use std::collections::BTreeSet;

use aho_corasick::AhoCorasick;
use regex_syntax::hir::{Class, Hir, HirKind};

type Lits = BTreeSet<Vec<u8>>;

/// Most strings in one set (larger products and unions are not formed).
const MAX_SET: usize = 256;
/// Most characters of a class taken one by one (`[\s(]` yes, `\w` no).
const MAX_CLASS: usize = 40;
/// Sets with this many one-byte strings or more are not used.
const MAX_SINGLE_BYTES: usize = 16;

/// What a sub-expression requires.
struct Info {
    /// Every string it matches, when that set is small.
    exact: Option<Lits>,
    /// Each match contains a string of each of these sets.
    clauses: Vec<Lits>,
}

fn exact_only(exact: Lits) -> Info {
    Info {
        exact: Some(exact),
        clauses: Vec::new(),
    }
}

/// A set is useful as a clause only when the empty string is not in it.
fn clause(set: &Lits) -> Option<Lits> {
    (!set.is_empty() && !set.contains(&Vec::new())).then(|| set.clone())
}

fn product(a: &Lits, b: &Lits) -> Option<Lits> {
    if a.len().saturating_mul(b.len()) > MAX_SET {
        return None;
    }
    Some(
        a.iter()
            .flat_map(|x| b.iter().map(move |y| [x.as_slice(), y].concat()))
            .collect(),
    )
}

fn class_literals(c: &Class) -> Option<Lits> {
    match c {
        Class::Unicode(u) => {
            let count: u32 = u
                .ranges()
                .iter()
                .map(|r| u32::from(r.end()) - u32::from(r.start()) + 1)
                .sum();
            if count as usize > MAX_CLASS {
                return None;
            }
            let mut out = Lits::new();
            for r in u.ranges() {
                for ch in r.start()..=r.end() {
                    let mut buf = [0u8; 4];
                    out.insert(ch.encode_utf8(&mut buf).as_bytes().to_vec());
                }
            }
            Some(out)
        }
        Class::Bytes(b) => {
            let count: usize = b
                .ranges()
                .iter()
                .map(|r| usize::from(r.end()) - usize::from(r.start()) + 1)
                .sum();
            if count > MAX_CLASS {
                return None;
            }
            Some(
                b.ranges()
                    .iter()
                    .flat_map(|r| r.start()..=r.end())
                    .map(|b| vec![b])
                    .collect(),
            )
        }
    }
}

/// The best single set a sub-expression requires: longest shortest string, then fewest.
fn best(info: &Info) -> Option<Lits> {
    info.clauses
        .iter()
        .cloned()
        .chain(info.exact.as_ref().and_then(clause))
        .max_by_key(|s| {
            let shortest = s.iter().map(Vec::len).min().unwrap_or(0);
            (shortest, std::cmp::Reverse(s.len()))
        })
}

fn analyse(h: &Hir) -> Info {
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => exact_only(Lits::from([Vec::new()])),
        HirKind::Literal(l) => {
            let s = Lits::from([l.0.to_vec()]);
            Info {
                exact: Some(s.clone()),
                clauses: vec![s],
            }
        }
        HirKind::Class(c) => {
            let exact = class_literals(c);
            Info {
                clauses: exact.iter().filter_map(clause).collect(),
                exact,
            }
        }
        HirKind::Capture(c) => analyse(&c.sub),
        HirKind::Repetition(r) => {
            let sub = analyse(&r.sub);
            if r.min == 0 {
                // Optional: matches the empty string, so it requires nothing.
                let exact = match (r.max, sub.exact) {
                    (Some(1), Some(mut e)) => {
                        e.insert(Vec::new());
                        Some(e)
                    }
                    _ => None,
                };
                Info {
                    exact,
                    clauses: Vec::new(),
                }
            } else {
                // At least one match of the sub-expression is part of every match.
                let exact = if r.min == 1 && r.max == Some(1) {
                    sub.exact
                } else {
                    None
                };
                Info {
                    exact,
                    clauses: sub.clauses,
                }
            }
        }
        HirKind::Concat(subs) => {
            let infos: Vec<Info> = subs.iter().map(analyse).collect();
            let mut clauses: Vec<Lits> = Vec::new();
            // Runs of adjacent sub-expressions with small exact sets: their product is a
            // substring of every match.
            let mut run: Option<Lits> = None;
            let mut whole = true;
            for info in &infos {
                clauses.extend(info.clauses.iter().cloned());
                match &info.exact {
                    Some(e) => {
                        run = match run.take() {
                            None => Some(e.clone()),
                            Some(r) => match product(&r, e) {
                                Some(p) => Some(p),
                                None => {
                                    whole = false;
                                    clauses.extend(clause(&r));
                                    Some(e.clone())
                                }
                            },
                        };
                    }
                    None => {
                        whole = false;
                        if let Some(r) = run.take() {
                            clauses.extend(clause(&r));
                        }
                    }
                }
            }
            let exact = if whole { run.clone() } else { None };
            if let Some(r) = run {
                clauses.extend(clause(&r));
            }
            Info { exact, clauses }
        }
        HirKind::Alternation(subs) => {
            let infos: Vec<Info> = subs.iter().map(analyse).collect();
            let mut exact = Some(Lits::new());
            let mut union = Some(Lits::new());
            for info in &infos {
                exact = match (exact, &info.exact) {
                    (Some(mut all), Some(e)) if all.len() + e.len() <= MAX_SET => {
                        all.extend(e.iter().cloned());
                        Some(all)
                    }
                    _ => None,
                };
                union = match (union, best(info)) {
                    (Some(mut all), Some(b)) if all.len() + b.len() <= MAX_SET => {
                        all.extend(b);
                        Some(all)
                    }
                    _ => None,
                };
            }
            Info {
                exact,
                clauses: union.into_iter().collect(),
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Cheaper, equivalent or weaker requirements: strings that contain another string of their
/// set go (the shorter one is found whenever the longer one is); sets that another set implies
/// go; sets of many single bytes (`[a-z]`) go, as nearly every value holds one. Dropping a set
/// only ever lets more patterns run.
fn minimise(clauses: Vec<Lits>) -> Vec<Lits> {
    let mut sets: Vec<Lits> = Vec::new();
    for set in clauses {
        let kept: Lits = set
            .iter()
            .filter(|s| !set.iter().any(|o| o.len() < s.len() && contains(s, o)))
            .cloned()
            .collect();
        let single_bytes = kept.iter().filter(|s| s.len() == 1).count();
        if single_bytes < MAX_SINGLE_BYTES && !sets.contains(&kept) {
            sets.push(kept);
        }
    }
    // `b` implies `a` when each string of `b` contains a string of `a`.
    let implies = |b: &Lits, a: &Lits| b.iter().all(|x| a.iter().any(|y| contains(x, y)));
    let mut i = 0;
    while i < sets.len() {
        let implied = (0..sets.len()).any(|j| j != i && implies(&sets[j], &sets[i]));
        if implied {
            sets.remove(i);
        } else {
            i += 1;
        }
    }
    sets
}

/// The sets one pattern requires (empty: it can match anywhere).
fn requirements(pattern: &str) -> Result<Vec<Lits>, String> {
    // The configuration `regex::bytes::Regex::new` parses with.
    let hir = regex_syntax::ParserBuilder::new()
        .utf8(false)
        .build()
        .parse(pattern)
        .map_err(|e| e.to_string())?;
    Ok(minimise(analyse(&hir).clauses))
}

/// One literal search that a value of `alphabet` bytes only must pass for any of `patterns`
/// to match it; `None` when some pattern needs no literal there (then every value must be
/// checked). Strings holding a byte outside the alphabet cannot occur in such a value and
/// are dropped; a pattern left with an empty set cannot match such a value at all.
pub fn gate_for_alphabet(
    patterns: &[&str],
    alphabet: impl Fn(u8) -> bool,
) -> Result<Option<AhoCorasick>, String> {
    let mut needles: Lits = Lits::new();
    for p in patterns {
        let sets: Vec<Lits> = requirements(p)?
            .into_iter()
            .map(|set| {
                set.into_iter()
                    .filter(|s| s.iter().all(|b| alphabet(*b)))
                    .collect()
            })
            .collect();
        if sets.iter().any(Lits::is_empty) {
            continue;
        }
        let shortest = |s: &Lits| s.iter().map(Vec::len).min().unwrap_or(0);
        match sets
            .into_iter()
            .max_by_key(|s| (shortest(s), std::cmp::Reverse(s.len())))
        {
            Some(best) => needles.extend(best),
            None => return Ok(None),
        }
    }
    AhoCorasick::new(&needles)
        .map(Some)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(sets: &[Lits]) -> Vec<Vec<String>> {
        sets.iter()
            .map(|s| {
                s.iter()
                    .map(|x| String::from_utf8_lossy(x).into_owned())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn requirements_follow_the_syntax() {
        let r = requirements(r"\bunion\b[\s(]+(all\s+|distinct\s+)?[\s(]*select\b").unwrap();
        let r = text(&r);
        assert!(r.contains(&vec!["union".to_string()]), "{r:?}");
        assert!(r.contains(&vec!["select".to_string()]), "{r:?}");
        assert!(
            r.iter()
                .any(|s| s.contains(&"(".to_string()) && s.contains(&" ".to_string()))
        );
        // Alternatives: one string of each branch.
        let r = text(&requirements(r"@@(version|datadir)\b|\bsysobjects\b").unwrap());
        assert_eq!(r, vec![vec!["@@datadir", "@@version", "sysobjects"]]);
        // Optional parts and wide classes require nothing.
        assert!(requirements(r"(abc)?\w+").unwrap().is_empty());
    }

    #[test]
    fn the_gate_drops_what_the_alphabet_cannot_hold() {
        let letters = |b: u8| b.is_ascii_lowercase() || b == b' ';
        // Needs `(`: impossible for letters; the other needs `select`.
        let gate = gate_for_alphabet(&[r"sleep\s*\(", r"\bselect\b"], letters)
            .unwrap()
            .unwrap();
        assert!(gate.is_match("we select it"));
        assert!(!gate.is_match("we sleep well"));
        // A pattern that needs no literal: no gate.
        assert!(gate_for_alphabet(&[r"\w+"], letters).unwrap().is_none());
    }
}
