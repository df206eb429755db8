//! The default config and policy pack, compiled in. `cedargate serve` (and `token mint`, `keys`)
//! without `--config`, run where `config/cedargate.toml` does not exist — an installed binary,
//! another working directory — runs with them: the config as shipped, and the policy pack
//! written once into `<data-dir>/policies`, where the operator may edit it (it is watched and
//! reloaded as any policy directory; an existing directory is never overwritten).

use std::path::Path;

use super::{Config, ConfigError};

/// `config/cedargate.toml` as shipped.
const CONFIG: &str = include_str!("../../../config/cedargate.toml");

/// The files of `policies/` as shipped (the policy tests stay in the repository).
const POLICIES: &[(&str, &str)] = &[
    (
        "schema.cedarschema",
        include_str!("../../../policies/schema.cedarschema"),
    ),
    ("routes.toml", include_str!("../../../policies/routes.toml")),
    ("roles.cedar", include_str!("../../../policies/roles.cedar")),
    (
        "tenancy.cedar",
        include_str!("../../../policies/tenancy.cedar"),
    ),
    (
        "attributes.cedar",
        include_str!("../../../policies/attributes.cedar"),
    ),
    ("m2m.cedar", include_str!("../../../policies/m2m.cedar")),
];

/// The config of a command: `config` as given; without one `config/cedargate.toml`, or where
/// that does not exist the embedded default ([`load`]). `true` with the embedded one.
pub fn resolve(config: Option<&Path>, data_dir: &Path) -> Result<(Config, bool), ConfigError> {
    let default = Path::new(crate::DEFAULT_CONFIG);
    match config {
        Some(file) => Ok((Config::load(file)?, false)),
        None if default.exists() => Ok((Config::load(default)?, false)),
        None => Ok((load(data_dir)?, true)),
    }
}

/// The embedded config, its relative paths anchored in `data_dir` and its policies those of
/// `<data_dir>/policies`, written there from the embedded pack if missing.
pub fn load(data_dir: &Path) -> Result<Config, ConfigError> {
    let policies = data_dir.join("policies");
    write_policies(&policies).map_err(|error| ConfigError::Read {
        path: policies.clone(),
        error,
    })?;
    let mut config = Config::parse(CONFIG, &data_dir.join("cedargate.toml"))?;
    config.policies_dir = policies;
    Ok(config)
}

/// Write the pack into `dir` unless it exists: into a sibling first, then renamed, so a start
/// that fails half-way never leaves a partial pack behind to be loaded next time.
fn write_policies(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)?;
    let staging = parent.join(format!(".policies-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging)?;
    for (name, text) in POLICIES {
        std::fs::write(staging.join(name), text)?;
    }
    match std::fs::rename(&staging, dir) {
        // Another process wrote it meanwhile: theirs stays.
        Err(_) if dir.exists() => std::fs::remove_dir_all(&staging),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of `policies/` is embedded, byte for byte (a new policy file must be added
    /// to `POLICIES`).
    #[test]
    fn the_embedded_pack_is_the_policy_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("policies/")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = POLICIES.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
        for (name, text) in POLICIES {
            assert_eq!(std::fs::read_to_string(dir.join(name)).unwrap(), *text);
        }
    }

    #[test]
    fn the_embedded_config_loads_and_writes_the_pack_once() {
        let data = tempfile::tempdir().unwrap();
        let config = load(data.path()).expect("embedded config");
        assert_eq!(config.policies_dir, data.path().join("policies"));
        let roles = data.path().join("policies/roles.cedar");
        assert!(roles.is_file());
        // An edited pack is the operator's: never overwritten.
        std::fs::write(&roles, "// edited\n").unwrap();
        load(data.path()).expect("again");
        assert_eq!(std::fs::read_to_string(&roles).unwrap(), "// edited\n");
    }
}
