//! The key directory: `<data_dir>/keys/rs256-<seq>.pem`, one PKCS#8 key per file, mode 0600,
//! in a 0700 directory. The highest sequence number is the current signing key; every key
//! in the directory is published.
//!
//! Several processes may open one data dir at once (`cedargate serve` and
//! `cedargate token mint`), so a file only ever appears complete and never changes: a key is
//! written to a private temp file, synced, then hard-linked to its final name, which fails
//! if that name exists. Whoever loses a race simply re-reads the directory. Rotation adds
//! the next sequence number; removing a retired key file is left to the operator (wait
//! until the longest token lifetime has passed since the rotation).

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::IssuerError;
use crate::keys::SigningKey;

const PREFIX: &str = "rs256-";
const SUFFIX: &str = ".pem";
const TEMP_PREFIX: &str = ".tmp-";
/// Temp files older than this were left by a crashed writer.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// The keys found on disk, newest (the signer) first.
pub(crate) struct KeyStore {
    dir: PathBuf,
}

fn key_seq(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn file_name(seq: u64) -> String {
    format!("{PREFIX}{seq:08}{SUFFIX}")
}

impl KeyStore {
    /// Open (creating with mode 0700) `<data_dir>/keys`.
    pub(crate) fn open(data_dir: &Path) -> Result<KeyStore, IssuerError> {
        let dir = data_dir.join("keys");
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&dir)
            .map_err(|e| IssuerError::io("creating", &dir, e))?;
        Ok(KeyStore { dir })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every key in the directory, newest first; makes the first key when there is none.
    pub(crate) fn load_or_create(&self) -> Result<Vec<SigningKey>, IssuerError> {
        let keys = self.load()?;
        if !keys.is_empty() {
            return Ok(keys);
        }
        // Sequence 1 is the only candidate, so concurrent first opens agree on one key.
        self.write_new(1)?;
        self.load()
    }

    /// Add a key with the next sequence number and return the new key list.
    pub(crate) fn rotate(&self) -> Result<Vec<SigningKey>, IssuerError> {
        for _ in 0..8 {
            let next = self.sequence_numbers()?.into_iter().max().unwrap_or(0) + 1;
            if self.write_new(next)? {
                return self.load();
            }
        }
        Err(IssuerError::io(
            "rotating keys in",
            &self.dir,
            std::io::Error::other("lost every race for a new key file name"),
        ))
    }

    fn sequence_numbers(&self) -> Result<Vec<u64>, IssuerError> {
        let entries =
            fs::read_dir(&self.dir).map_err(|e| IssuerError::io("reading", &self.dir, e))?;
        let mut seqs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| IssuerError::io("reading", &self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(seq) = key_seq(name) {
                seqs.push(seq);
            } else if name.starts_with(TEMP_PREFIX) {
                remove_if_stale(&entry.path());
            }
        }
        Ok(seqs)
    }

    /// Read every key file, newest first.
    pub(crate) fn load(&self) -> Result<Vec<SigningKey>, IssuerError> {
        let mut seqs = self.sequence_numbers()?;
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        let mut keys = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let path = self.dir.join(file_name(seq));
            warn_if_exposed(&path);
            let text = fs::read(&path).map_err(|e| IssuerError::io("reading", &path, e))?;
            let key = SigningKey::from_pem(&text)
                .map_err(|reason| IssuerError::BadKey { path, reason })?;
            keys.push(key);
        }
        Ok(keys)
    }

    /// Delete the key files whose successor (the next newer key) was created more than
    /// `keep` ago. The newest key is never removed. Returns the removed file names.
    pub(crate) fn prune_retired(&self, keep: Duration) -> Result<Vec<String>, IssuerError> {
        let mut seqs = self.sequence_numbers()?;
        seqs.sort_unstable();
        let mut removed = Vec::new();
        for pair in seqs.windows(2) {
            let (old, successor) = (pair[0], pair[1]);
            let successor_path = self.dir.join(file_name(successor));
            let age = fs::metadata(&successor_path)
                .and_then(|m| m.modified())
                .map_err(|e| IssuerError::io("reading", &successor_path, e))?
                .elapsed()
                .unwrap_or_default();
            if age > keep {
                let path = self.dir.join(file_name(old));
                fs::remove_file(&path).map_err(|e| IssuerError::io("removing", &path, e))?;
                tracing::info!(file = %path.display(), "removed a retired signing key");
                removed.push(file_name(old));
            }
        }
        if !removed.is_empty() {
            sync_dir(&self.dir);
        }
        Ok(removed)
    }

    /// Generate a key and publish it as `seq`; `false` if that name was taken meanwhile.
    fn write_new(&self, seq: u64) -> Result<bool, IssuerError> {
        let key = SigningKey::generate()?;
        let pem = key.to_pem()?;
        let temp = self
            .dir
            .join(format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
        let target = self.dir.join(file_name(seq));
        let result = write_private(&temp, pem.as_bytes()).and_then(|()| {
            match fs::hard_link(&temp, &target) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(IssuerError::io("linking", &target, e)),
            }
        });
        let _ = fs::remove_file(&temp);
        if let Ok(true) = result {
            sync_dir(&self.dir);
            tracing::info!(kid = key.kid(), file = %target.display(), "created a signing key");
        }
        result
    }
}

/// Create `path` (which must not exist) readable by the owner only, write and sync it.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IssuerError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| IssuerError::io("creating", path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| IssuerError::io("writing", path, e))
}

fn sync_dir(dir: &Path) {
    // Best effort: makes the new name durable; not every platform can open a directory.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn remove_if_stale(path: &Path) {
    let stale = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_TEMP);
    if stale && fs::remove_file(path).is_ok() {
        tracing::info!(file = %path.display(), "removed a stale temporary key file");
    }
}

fn warn_if_exposed(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "a signing key file is accessible to other users; chmod 600 it"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_sort() {
        assert_eq!(key_seq(&file_name(7)), Some(7));
        assert_eq!(file_name(7), "rs256-00000007.pem");
        assert_eq!(key_seq("rs256-123456789.pem"), Some(123_456_789));
        for bad in [
            "rs256-.pem",
            "rs256-1a.pem",
            "rs256-+1.pem",
            ".tmp-abc",
            "notes.txt",
        ] {
            assert_eq!(key_seq(bad), None, "{bad}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn files_and_dir_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let data = tempfile::tempdir().unwrap();
        let store = KeyStore::open(data.path()).unwrap();
        let keys = store.load_or_create().unwrap();
        assert_eq!(keys.len(), 1);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(store.dir()), 0o700);
        let names: Vec<_> = fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["rs256-00000001.pem"], "no temp file is left behind");
        assert_eq!(mode(&store.dir().join(&names[0])), 0o600);
    }

    #[test]
    fn concurrent_first_opens_agree_on_one_key() {
        let data = tempfile::tempdir().unwrap();
        let kids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let store = KeyStore::open(data.path()).unwrap();
                        let keys = store.load_or_create().unwrap();
                        assert_eq!(keys.len(), 1);
                        keys[0].kid().to_string()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(kids.windows(2).all(|w| w[0] == w[1]), "{kids:?}");
    }

    #[test]
    fn rotation_adds_a_newer_key_and_keeps_the_old() {
        let data = tempfile::tempdir().unwrap();
        let store = KeyStore::open(data.path()).unwrap();
        let first = store.load_or_create().unwrap();
        let rotated = store.rotate().unwrap();
        assert_eq!(rotated.len(), 2);
        assert_eq!(
            rotated[1].kid(),
            first[0].kid(),
            "the old key stays, second"
        );
        assert_ne!(rotated[0].kid(), first[0].kid(), "the new key signs");
        assert!(store.dir().join("rs256-00000002.pem").exists());
    }

    #[test]
    fn pruning_keeps_the_signer_and_young_retirees() {
        let data = tempfile::tempdir().unwrap();
        let store = KeyStore::open(data.path()).unwrap();
        store.load_or_create().unwrap();
        store.rotate().unwrap();
        assert!(
            store
                .prune_retired(Duration::from_secs(60))
                .unwrap()
                .is_empty(),
            "key 1 was retired just now"
        );
        std::thread::sleep(Duration::from_millis(20));
        let removed = store.prune_retired(Duration::from_millis(1)).unwrap();
        assert_eq!(removed, ["rs256-00000001.pem"]);
        let keys = store.load().unwrap();
        assert_eq!(keys.len(), 1, "the signer stays");
    }

    #[test]
    fn a_corrupt_key_file_fails_with_its_name() {
        let data = tempfile::tempdir().unwrap();
        let store = KeyStore::open(data.path()).unwrap();
        fs::write(store.dir().join("rs256-00000001.pem"), "garbage").unwrap();
        let e = store.load_or_create().unwrap_err().to_string();
        assert!(e.contains("rs256-00000001.pem"), "{e}");
    }
}
