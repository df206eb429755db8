//! Client secrets: argon2id PHC hashes, their verification, and a bound on concurrent
//! verifications (each one costs ~19 MiB and tens of milliseconds by design).

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};
use rand::RngCore;

use crate::error::IssuerError;

/// Hash a client secret as an argon2id PHC string (default parameters: m=19 MiB, t=2, p=1).
pub fn hash_secret(secret: &str) -> Result<String, IssuerError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| IssuerError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| IssuerError::Hash(e.to_string()))
}

/// Check `secret` against a PHC hash; the parameters come from the hash and the final
/// comparison is constant-time (argon2's own). A malformed hash never verifies.
pub fn verify_secret(phc: &str, secret: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default()
            .verify_password(secret.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash of a random secret with the same algorithm and cost as `like` (argon2id defaults
/// without it), for verifying unknown client ids at the cost of a known one.
pub(crate) fn dummy_hash(like: Option<&str>) -> Result<String, IssuerError> {
    let random = uuid::Uuid::new_v4().to_string();
    let Some(template) = like.and_then(|phc| PasswordHash::new(phc).ok()) else {
        return hash_secret(&random);
    };
    let params = Params::try_from(&template).map_err(|e| IssuerError::Hash(e.to_string()))?;
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| IssuerError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password_customized(
            random.as_bytes(),
            Some(template.algorithm),
            template.version,
            params,
            &salt,
        )
        .map(|h| h.to_string())
        .map_err(|e| IssuerError::Hash(e.to_string()))
}

/// Whether `phc` parses as an argon2 PHC string.
pub(crate) fn check_phc(phc: &str) -> Result<(), String> {
    let hash = PasswordHash::new(phc).map_err(|e| format!("not a PHC string ({e})"))?;
    if !hash.algorithm.as_str().starts_with("argon2") {
        return Err(format!("algorithm `{}` is not argon2", hash.algorithm));
    }
    if hash.hash.is_none() || hash.salt.is_none() {
        return Err("the PHC string has no salt or no hash".into());
    }
    Ok(())
}

/// A counting semaphore for secret verifications, so a burst of token requests queues
/// briefly instead of running hundreds of argon2 instances (and their memory) at once.
pub(crate) struct VerifyGate {
    in_flight: Mutex<usize>,
    freed: Condvar,
    limit: usize,
    max_wait: Duration,
}

/// Permission to run one verification; releases its slot on drop.
pub(crate) struct VerifyPermit<'a>(&'a VerifyGate);

impl VerifyGate {
    pub(crate) fn new(limit: usize, max_wait: Duration) -> Self {
        VerifyGate {
            in_flight: Mutex::new(0),
            freed: Condvar::new(),
            limit: limit.max(1),
            max_wait,
        }
    }

    /// Wait up to `max_wait` for a slot; `None` when the gate stayed full.
    pub(crate) fn enter(&self) -> Option<VerifyPermit<'_>> {
        let deadline = Instant::now() + self.max_wait;
        let mut n = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= self.limit {
            let left = deadline.checked_duration_since(Instant::now())?;
            n = self
                .freed
                .wait_timeout(n, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *n += 1;
        Some(VerifyPermit(self))
    }
}

impl Drop for VerifyPermit<'_> {
    fn drop(&mut self) {
        let mut n = self.0.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify_round_trip() {
        let phc = hash_secret("s3cret: with spaces & symbols").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(check_phc(&phc).is_ok());
        assert!(verify_secret(&phc, "s3cret: with spaces & symbols"));
        assert!(!verify_secret(&phc, "s3cret: with spaces & symbol"));
        assert!(!verify_secret(&phc, ""));
        assert!(!verify_secret("not a hash", "x"));
        // A fresh salt every time.
        assert_ne!(phc, hash_secret("s3cret: with spaces & symbols").unwrap());
    }

    #[test]
    fn the_dummy_hash_copies_the_cost_of_a_real_one() {
        let cheap = Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            Params::new(8 * 1024, 3, 1, None).unwrap(),
        )
        .hash_password(b"x", &SaltString::encode_b64(&[7; 16]).unwrap())
        .unwrap()
        .to_string();
        let dummy = dummy_hash(Some(&cheap)).unwrap();
        assert!(
            dummy.starts_with("$argon2id$v=19$m=8192,t=3,p=1$"),
            "{dummy}"
        );
        assert!(
            dummy_hash(None)
                .unwrap()
                .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
        );
    }

    #[test]
    fn check_phc_rejects_plaintext_and_other_algorithms() {
        assert!(check_phc("demo-partner-secret").is_err());
        assert!(check_phc("$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA").is_err());
    }

    #[test]
    fn the_gate_bounds_concurrency_and_times_out() {
        let gate = VerifyGate::new(1, Duration::from_millis(20));
        let first = gate.enter().expect("a free slot");
        assert!(gate.enter().is_none(), "the second waits, then gives up");
        drop(first);
        assert!(gate.enter().is_some(), "a released slot is reusable");
    }

    /// Prints the PHC hash of the demo client's public secret, for config/cedargate.toml:
    /// `cargo test -p token-proxy demo_secret_hash -- --nocapture`.
    #[test]
    fn demo_secret_hash() {
        let phc = hash_secret("demo-partner-secret").unwrap();
        assert!(verify_secret(&phc, "demo-partner-secret"));
        println!("demo-partner-secret => {phc}");
    }
}
