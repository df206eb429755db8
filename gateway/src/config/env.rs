//! `${NAME}` in configuration string values: replaced by the environment variable `NAME`
//! (an unset one is an error naming the key and the variable); `$${` writes a literal `${`.
//! Only string values are interpolated, after the file has been checked against the raw
//! shape, so an environment value can never add keys or change a value's type.

use toml::Value;

/// Why a value could not be interpolated.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct EnvError {
    /// The dotted key of the value (`token_proxy.upstream`, `authn.trusted_issuers[0].issuer`).
    pub key: String,
    pub message: String,
}

/// Interpolate every string in `value` (a whole config table).
pub(super) fn interpolate(
    value: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), EnvError> {
    walk(value, String::new(), lookup)
}

fn walk(
    value: &mut Value,
    key: String,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), EnvError> {
    match value {
        Value::String(s) if s.contains('$') => {
            *s = expand(s, lookup).map_err(|message| EnvError {
                key: key.clone(),
                message,
            })?;
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, format!("{key}[{i}]"), lookup)?;
            }
        }
        Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                let child = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                walk(v, child, lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after.find('}').ok_or_else(|| {
                "an unterminated `${` (write `$${` for a literal one)".to_string()
            })?;
            let name = &after[..end];
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("`${{{name}}}` is not an environment variable name"));
            }
            let value =
                lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            // A `$` not followed by `{` is plain text (argon2 hashes are full of them).
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "URL" => Some("https://idp.example".into()),
            "EMPTY" => Some(String::new()),
            "QUOTE" => Some("a\"b\n[x]".into()),
            _ => None,
        }
    }

    #[test]
    fn variables_are_replaced_and_dollars_kept() {
        assert_eq!(
            expand("${URL}/oauth2", &env).unwrap(),
            "https://idp.example/oauth2"
        );
        assert_eq!(expand("a${EMPTY}b", &env).unwrap(), "ab");
        assert_eq!(
            expand("$$${URL}", &env).unwrap(),
            "$${URL}",
            "a `$`, then an escaped `${{`"
        );
        assert_eq!(expand("$${URL}", &env).unwrap(), "${URL}");
        let phc = "$argon2id$v=19$m=19456,t=2,p=1$salt$hash";
        assert_eq!(expand(phc, &env).unwrap(), phc);
        assert_eq!(
            expand("${QUOTE}", &env).unwrap(),
            "a\"b\n[x]",
            "values are data, not TOML"
        );
    }

    #[test]
    fn errors_name_the_key_and_the_variable() {
        let mut v: Value =
            toml::from_str("[token_proxy]\nupstream = \"${UNSET_VAR}\"\n[[a.b]]\nc = \"${URL}\"\n")
                .unwrap();
        let e = interpolate(&mut v, &env).unwrap_err();
        assert_eq!(e.key, "token_proxy.upstream");
        assert!(e.message.contains("UNSET_VAR"), "{}", e.message);
        let mut v: Value = toml::from_str("x = [\"ok\", \"${1BAD}\"]\n").unwrap();
        let e = interpolate(&mut v, &env).unwrap_err();
        assert_eq!(e.key, "x[1]");
        assert!(expand("${URL", &env).unwrap_err().contains("unterminated"));
    }
}
