//! `policy format`: Cedar's own formatter (`cedar-policy-formatter`, the one behind
//! `cedar format`, default settings: 80 columns, 2-space indent) over every `*.cedar` file.

use std::path::{Path, PathBuf};

use cedar_policy_formatter::{Config, policies_str_to_pretty};

pub fn run(dir: &Path, check: bool) -> anyhow::Result<bool> {
    let files = cedar_files(dir)?;
    if files.is_empty() {
        anyhow::bail!("{}: no *.cedar files", dir.display());
    }
    let config = Config::default();
    let mut changed = Vec::new();
    let mut failed = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
        let pretty = match policies_str_to_pretty(&text, &config) {
            Ok(p) => p,
            Err(e) => {
                failed.push(format!("{}: cannot format: {e:#}", path.display()));
                continue;
            }
        };
        if pretty == text {
            continue;
        }
        if check {
            out!(
                "{}:{}: would reformat",
                path.display(),
                first_difference(&text, &pretty)
            );
        } else {
            std::fs::write(path, &pretty)
                .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))?;
            out!("{}: formatted", path.display());
        }
        changed.push(path);
    }
    if !failed.is_empty() {
        anyhow::bail!("{}", failed.join("\n"));
    }
    if check && !changed.is_empty() {
        eprintln!(
            "{} of {} file(s) need formatting: run `cedargate policy format {}`",
            changed.len(),
            files.len(),
            dir.display()
        );
        return Ok(false);
    }
    if changed.is_empty() {
        out!("{} file(s) already formatted", files.len());
    }
    Ok(true)
}

/// The first line (1-based) where two texts differ.
fn first_difference(a: &str, b: &str) -> usize {
    a.lines()
        .zip(b.lines())
        .position(|(x, y)| x != y)
        .unwrap_or_else(|| a.lines().count().min(b.lines().count()))
        + 1
}

/// `*.cedar` files under `dir`, recursively (skipping hidden directories), sorted.
fn cedar_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| anyhow::anyhow!("{}: cannot read directory: {e}", d.display()))?;
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if path.is_dir() && !hidden {
                pending.push(path);
            } else if path.is_file() && path.extension().is_some_and(|x| x == "cedar") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_reports_and_format_fixes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.cedar");
        std::fs::write(
            &file,
            "@id(\"a\")\npermit(principal,action,resource) when {context.x==1};\n",
        )
        .unwrap();
        assert!(!run(dir.path(), true).unwrap());
        assert!(run(dir.path(), false).unwrap());
        assert!(run(dir.path(), true).unwrap());
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains("permit (principal, action, resource)"),
            "{text}"
        );
    }

    #[test]
    fn unparsable_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.cedar"), "permit (principal,").unwrap();
        assert!(run(dir.path(), true).is_err());
    }

    #[test]
    fn differences_are_located() {
        assert_eq!(first_difference("a\nb\nc", "a\nx\nc"), 2);
        assert_eq!(first_difference("a\n", "a\nb\n"), 2);
    }
}
