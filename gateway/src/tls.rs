//! TLS certificates that can be renewed without a restart.
//!
//! Each TLS listener gets a rustls certificate resolver holding the current certificate and key.
//! A reload (files changed, SIGHUP, `POST /admin/tls/reload`) parses the files completely first;
//! only a valid pair replaces the one in force, so a half-written or mismatched renewal never
//! breaks handshakes. New handshakes use the new certificate; open connections keep theirs.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};

use crate::config::CertFiles;

/// The certificate of one listener, swapped atomically on reload.
#[derive(Debug)]
pub struct ReloadingCert {
    files: CertFiles,
    current: ArcSwap<CertifiedKey>,
}

fn load(files: &CertFiles) -> Result<Arc<CertifiedKey>, String> {
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default().ok_or("no TLS crypto provider")?;
    let (certs, key) = pingora::tls::load_certs_and_key_files(
        &files.cert_file.to_string_lossy(),
        &files.key_file.to_string_lossy(),
    )
    .map_err(|e| format!("{e}"))?
    .ok_or_else(|| {
        format!(
            "{} holds no certificate or {} no private key",
            files.cert_file.display(),
            files.key_file.display()
        )
    })?;
    let key = CertifiedKey::from_der(certs, key, provider).map_err(|e| {
        format!(
            "{} and {}: {e}",
            files.cert_file.display(),
            files.key_file.display()
        )
    })?;
    Ok(Arc::new(key))
}

impl ReloadingCert {
    /// Load the pair; an error names the files and what is wrong.
    pub fn new(files: &CertFiles) -> Result<Arc<ReloadingCert>, String> {
        let key = load(files)?;
        Ok(Arc::new(ReloadingCert {
            files: files.clone(),
            current: ArcSwap::new(key),
        }))
    }

    /// The TLS settings of a listener serving this certificate (TLS 1.2 and 1.3 only).
    pub fn settings(self: &Arc<Self>) -> pingora::Result<TlsSettings> {
        let mut settings = TlsSettings::intermediate("", "")?;
        settings.set_cert_resolver(self.clone());
        Ok(settings)
    }

    /// Re-read the files; on error the pair in force stays.
    pub fn reload(&self, trigger: &str) -> Result<(), String> {
        match load(&self.files) {
            Ok(key) => {
                self.current.store(key);
                crate::metrics::tls_reload("ok");
                tracing::info!(trigger, cert = %self.files.cert_file.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                crate::metrics::tls_reload("refused");
                tracing::error!(trigger, error = %e, "TLS certificate refused; the one in force stays");
                Err(e)
            }
        }
    }
}

impl crate::reload::Reload for ReloadingCert {
    type Stamp = [Option<SystemTime>; 2];

    fn stamp(&self) -> Self::Stamp {
        [&self.files.cert_file, &self.files.key_file].map(|p| crate::reload::modified(p))
    }

    fn reload_files(&self, trigger: &'static str) {
        let _ = self.reload(trigger);
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
