//! Stage 5: an M2M token with `X-User-ID` acts for that user.
//!
//! The token must be a machine token (`platform = "m2m"`) holding `app/write` or
//! `dashboard/write`; the user must exist in the token's workspace, looked up in the backend's
//! directory (`GET /internal/v1/workspaces/{ws}/users/{id}`, signed like any forwarded request)
//! and cached briefly. Anything else is 403 `auth/invalid_delegation`; a directory that cannot
//! answer refuses the request (fail closed).
//!
//! The cache forgets a user as soon as a change to them passes through this gateway and the
//! backend accepts it ([`DirectoryChange`]): a deleted or suspended user cannot be acted for
//! on the next request. Changes made elsewhere (another instance, the backend directly) are
//! seen when the entry expires ([`POSITIVE_TTL`]).

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use serde::Deserialize;

use crate::authn::Identity;
use crate::error::GatewayError;
use crate::forward::AssertionSigner;
use crate::proxy::Upstream;

/// The scopes that allow acting for a user.
const DELEGATING_SCOPES: [&str; 2] = ["app/write", "dashboard/write"];
/// Found users are cached this long; absent ones for [`NEGATIVE_TTL`].
const POSITIVE_TTL: Duration = Duration::from_secs(30);
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The user a delegated request acts for, as the directory knows them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DelegatedUser {
    pub user_id: String,
    #[serde(default)]
    pub principal_id: Option<String>,
    pub workspace_id: String,
    #[serde(default)]
    pub lang: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
}

/// A change to the directory a request makes when the backend accepts it (a 2xx answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryChange {
    /// A user changed or went away (a write to a route with a `userId` parameter).
    User { workspace: String, user: String },
    /// A user may have been created (`POST …/users`): forget the users found absent.
    NewUser,
    /// A whole workspace went away (`DELETE …/workspaces/{workspaceId}`).
    Workspace,
}

impl DirectoryChange {
    /// What a request to `template` with these path parameters changes, if it succeeds.
    pub fn of(
        method: &http::Method,
        template: &str,
        param: impl Fn(&str) -> Option<String>,
    ) -> Option<DirectoryChange> {
        use http::Method;
        if !matches!(
            *method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        ) {
            return None;
        }
        if let (Some(workspace), Some(user)) = (param("workspaceId"), param("userId")) {
            return Some(DirectoryChange::User { workspace, user });
        }
        if *method == Method::POST && template.ends_with("/users") {
            return Some(DirectoryChange::NewUser);
        }
        if *method == Method::DELETE && template.ends_with("/workspaces/{workspaceId}") {
            return Some(DirectoryChange::Workspace);
        }
        None
    }
}

/// The backend's user directory, with a short cache.
pub struct Directory {
    client: reqwest::Client,
    base: String,
    signer: AssertionSigner,
    /// Whether the embedded backend serves yet (a graceful upgrade's hand-over).
    backend: Arc<crate::drain::Backend>,
    found: Cache<(String, String), Arc<DelegatedUser>>,
    absent: Cache<(String, String), ()>,
}

impl Directory {
    /// A directory client for the backend at `upstream`.
    pub fn new(
        upstream: &Upstream,
        signer: AssertionSigner,
        backend: Arc<crate::drain::Backend>,
    ) -> anyhow::Result<Directory> {
        let builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(LOOKUP_TIMEOUT)
            .pool_max_idle_per_host(4);
        let (client, base) = match upstream {
            Upstream::Unix(path) => (
                builder
                    .unix_socket(std::path::PathBuf::from(path))
                    .build()?,
                "http://backend".to_string(),
            ),
            Upstream::Tcp(addr) => (builder.build()?, format!("http://{addr}")),
        };
        Ok(Directory {
            client,
            base,
            signer,
            backend,
            found: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(POSITIVE_TTL)
                .build(),
            absent: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(NEGATIVE_TTL)
                .build(),
        })
    }

    /// Stage 5 for one request: `None` without `X-User-ID`, the user acted for, or why not.
    pub async fn delegate(
        &self,
        identity: &Identity,
        header: Option<&[u8]>,
        request_id: &str,
    ) -> Result<Option<Arc<DelegatedUser>>, GatewayError> {
        let Some(raw) = header else {
            return Ok(None);
        };
        if identity.platform.as_deref() != Some("m2m") {
            return Err(GatewayError::InvalidDelegation(
                "X-User-ID is accepted only with a machine (M2M) token",
            ));
        }
        if !identity
            .scopes
            .iter()
            .any(|s| DELEGATING_SCOPES.contains(&s.as_str()))
        {
            return Err(GatewayError::InvalidDelegation(
                "acting for a user needs the app/write or dashboard/write scope",
            ));
        }
        let user = std::str::from_utf8(raw)
            .ok()
            .filter(|u| valid_user_id(u))
            .ok_or(GatewayError::InvalidDelegation(
                "X-User-ID is not a valid user id",
            ))?;
        let Some(ws) = identity.workspace_id.as_deref() else {
            return Err(GatewayError::InvalidDelegation(
                "the token names no workspace to act in",
            ));
        };
        let key = (ws.to_string(), user.to_string());
        if let Some(found) = self.found.get(&key).await {
            crate::metrics::cache_lookup("delegation", true);
            return active(found).map(Some);
        }
        if self.absent.get(&key).await.is_some() {
            crate::metrics::cache_lookup("delegation", true);
            return Err(unknown_user());
        }
        crate::metrics::cache_lookup("delegation", false);
        match self.fetch(identity, ws, user, request_id).await? {
            Some(found) if found.workspace_id == ws && found.user_id == user => {
                let found = Arc::new(found);
                self.found.insert(key, found.clone()).await;
                active(found).map(Some)
            }
            _ => {
                self.absent.insert(key, ()).await;
                Err(unknown_user())
            }
        }
    }

    /// The backend accepted `change`: forget what the cache knew of it.
    pub async fn forget(&self, change: &DirectoryChange) {
        match change {
            DirectoryChange::User { workspace, user } => {
                let key = (workspace.clone(), user.clone());
                self.found.invalidate(&key).await;
                self.absent.invalidate(&key).await;
            }
            DirectoryChange::NewUser => self.absent.invalidate_all(),
            DirectoryChange::Workspace => self.found.invalidate_all(),
        }
    }

    async fn fetch(
        &self,
        identity: &Identity,
        ws: &str,
        user: &str,
        request_id: &str,
    ) -> Result<Option<DelegatedUser>, GatewayError> {
        let path = format!("/internal/v1/workspaces/{ws}/users/{user}");
        let assertion = self
            .signer
            .sign(identity, None, "GET", &path, request_id)
            .ok_or(GatewayError::Internal)?;
        let send = || {
            self.client
                .get(format!("{}{path}", self.base))
                .header(backend::ASSERTION_HEADER, &assertion)
                .header(crate::request_id::HEADER, request_id)
                .send()
        };
        let resp = match send().await {
            // A graceful upgrade's hand-over: the backend is between processes.
            Err(_) if !self.backend.is_ready() && self.backend.wait_ready().await => send().await,
            sent => sent,
        }
        .map_err(|e| {
            tracing::warn!(error = %e, "the user directory is unreachable");
            crate::metrics::upstream_error("DirectoryUnreachable");
            GatewayError::UpstreamUnavailable
        })?;
        match resp.status().as_u16() {
            200 => resp.json::<DelegatedUser>().await.map(Some).map_err(|_| {
                crate::metrics::upstream_error("DirectoryInvalidAnswer");
                GatewayError::UpstreamUnavailable
            }),
            404 | 403 => Ok(None),
            status => {
                tracing::warn!(status, "the user directory answered an error");
                crate::metrics::upstream_error("DirectoryError");
                Err(GatewayError::UpstreamUnavailable)
            }
        }
    }
}

/// A user the directory lists with a status other than `active` cannot be acted for.
fn active(user: Arc<DelegatedUser>) -> Result<Arc<DelegatedUser>, GatewayError> {
    match user.status.as_deref() {
        None | Some("active") => Ok(user),
        Some(_) => Err(GatewayError::InvalidDelegation(
            "X-User-ID names a user who is not active",
        )),
    }
}

fn unknown_user() -> GatewayError {
    GatewayError::InvalidDelegation("X-User-ID names no user of the token's workspace")
}

/// Ids as the backend makes them (nanoid alphabet) or seeds them (`u-owner`); nothing that
/// could change the directory path.
fn valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && id != "."
        && id != ".."
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_to_users_and_workspaces_are_directory_changes() {
        use http::Method;
        let params = |ws: Option<&str>, user: Option<&str>| {
            let (ws, user) = (ws.map(str::to_owned), user.map(str::to_owned));
            move |name: &str| match name {
                "workspaceId" => ws.clone(),
                "userId" => user.clone(),
                _ => None,
            }
        };
        let user = Some(DirectoryChange::User {
            workspace: "ws".into(),
            user: "u".into(),
        });
        let t = "/dashboard/v1/workspaces/{workspaceId}/users/{userId}";
        for m in [Method::DELETE, Method::PUT, Method::PATCH, Method::POST] {
            assert_eq!(
                DirectoryChange::of(&m, t, params(Some("ws"), Some("u"))),
                user
            );
        }
        assert_eq!(
            DirectoryChange::of(&Method::GET, t, params(Some("ws"), Some("u"))),
            None
        );
        assert_eq!(
            DirectoryChange::of(
                &Method::POST,
                "/dashboard/v1/workspaces/{workspaceId}/users",
                params(Some("ws"), None)
            ),
            Some(DirectoryChange::NewUser)
        );
        assert_eq!(
            DirectoryChange::of(
                &Method::DELETE,
                "/dashboard/v1/workspaces/{workspaceId}",
                params(Some("ws"), None)
            ),
            Some(DirectoryChange::Workspace)
        );
        assert_eq!(
            DirectoryChange::of(
                &Method::POST,
                "/app/v1/workspaces/{workspaceId}/missions/{missionId}/complete",
                params(Some("ws"), None)
            ),
            None
        );
    }

    #[test]
    fn user_ids_cannot_escape_the_directory_path() {
        assert!(valid_user_id("u-owner"));
        assert!(valid_user_id("V1StGXR8_Z5jdHi6B-myT"));
        for bad in ["", "..", "a/b", "a%2fb", "a b", "é", &"x".repeat(129)] {
            assert!(!valid_user_id(bad), "{bad:?}");
        }
    }
}
