//! The route table: the request path split into area, workspace and the rest, and one match
//! from (area, method, rest) to a handler. Anything unmatched is 404 `resource/not_found`.

use percent_encoding::percent_decode_str;

use crate::error::ApiError;
use crate::handlers::validate as spec;
use crate::handlers::{Area, Ctx, Reply, Verb, content, points, users};
use crate::store::{self, Store};

/// Where a path points: `/{app|dashboard}/v1/workspaces/{workspaceId}/{rest...}`.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    /// App or dashboard.
    pub area: Area,
    /// The workspace id from the path.
    pub ws: String,
    /// The decoded segments after the workspace id.
    pub rest: Vec<String>,
}

fn no_route() -> ApiError {
    ApiError::NotFound("no such resource".into())
}

/// Split and decode `path`. Empty, `.`/`..`, undecodable segments and segments hiding `/` or
/// control characters match nothing (the gateway refuses them before they get here).
pub fn target(path: &str) -> Result<Target, ApiError> {
    let rest = path.strip_prefix('/').ok_or_else(no_route)?;
    let mut segments = Vec::new();
    for raw in rest.split('/') {
        let seg = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| no_route())?;
        if seg.is_empty()
            || seg == "."
            || seg == ".."
            || seg.contains('/')
            || seg.chars().any(char::is_control)
        {
            return Err(no_route());
        }
        segments.push(seg.into_owned());
    }
    let mut it = segments.into_iter();
    let area = match it.next().as_deref() {
        Some("app") => Area::App,
        Some("dashboard") => Area::Dashboard,
        Some("internal") => Area::Internal,
        _ => return Err(no_route()),
    };
    if it.next().as_deref() != Some("v1") || it.next().as_deref() != Some("workspaces") {
        return Err(no_route());
    }
    let ws = it.next().ok_or_else(no_route)?;
    Ok(Target {
        area,
        ws,
        rest: it.collect(),
    })
}

/// Run the handler for `cx`.
pub async fn dispatch(s: &dyn Store, cx: &Ctx) -> Result<Reply, ApiError> {
    use Area::{App, Dashboard as Dash, Internal};
    use Verb::{Delete, Get, Post, Put};
    let rest: Vec<&str> = cx.rest.iter().map(String::as_str).collect();
    match (cx.area, cx.verb, rest.as_slice()) {
        // App: end users.
        (App, Get, ["missions"]) => content::list(s, cx, store::MISSIONS).await,
        (App, Get, ["missions", id]) => content::get(s, cx, store::MISSIONS, id).await,
        (App, Post, ["missions", id, "complete"]) => points::complete_mission(s, cx, id).await,
        (App, Get, ["badges"]) => content::list(s, cx, store::BADGES).await,
        (App, Get, ["levels"]) => content::levels(s, cx).await,
        (App, Get, ["points"]) => points::mine(s, cx).await,
        (App, Post, ["points"]) => points::award(s, cx).await,
        (App, Get, ["groups"]) => content::list(s, cx, store::GROUPS).await,
        (App, Get, ["catalog"]) => content::catalog_list(s, cx).await,
        (App, Get, ["catalog", id]) => content::catalog_item(s, cx, id).await,
        (App, Get, ["leaderboards"]) => points::leaderboards(s, cx).await,
        (App, Get, ["leaderboards", id]) => points::leaderboard(s, cx, id).await,
        (App, Get, ["premium-content"]) => content::premium(s, cx, None).await,
        (App, Get, ["premium-content", id]) => content::premium(s, cx, Some(id)).await,

        // Dashboard: reads.
        (Dash, Get, ["missions"]) => content::list(s, cx, store::MISSIONS).await,
        (Dash, Get, ["leaderboards"]) => points::leaderboards(s, cx).await,
        (Dash, Get, ["badges"]) => content::list(s, cx, store::BADGES).await,
        (Dash, Get, ["catalog"]) => content::catalog_list(s, cx).await,
        (Dash, Get, ["users"]) => content::list(s, cx, store::USERS).await,
        (Dash, Get, ["users", id]) => users::get(s, cx, id).await,
        (Dash, Get, ["groups"]) => content::list(s, cx, store::GROUPS).await,
        (Dash, Get, ["departments", id, "reports"]) => users::report(s, cx, id).await,

        // Dashboard: content writes.
        (Dash, Post, ["missions"]) => content::create(s, cx, store::MISSIONS, spec::MISSION).await,
        (Dash, Post, ["leaderboards"]) => {
            content::create(s, cx, store::LEADERBOARDS, spec::LEADERBOARD).await
        }
        (Dash, Post, ["badges"]) => content::create(s, cx, store::BADGES, spec::BADGE).await,
        (Dash, Post, ["catalog"]) => {
            content::create(s, cx, store::CATALOG, spec::CATALOG_ITEM).await
        }
        (Dash, Put, ["missions", id]) => {
            content::update(s, cx, store::MISSIONS, id, spec::MISSION).await
        }
        (Dash, Put, ["levels", id]) => content::update(s, cx, store::LEVELS, id, spec::LEVEL).await,
        (Dash, Delete, ["missions", id]) => content::remove(s, cx, store::MISSIONS, id).await,
        (Dash, Delete, ["catalog", id]) => content::remove(s, cx, store::CATALOG, id).await,

        // Dashboard: administration.
        (Dash, Post, ["users"]) => users::create(s, cx).await,
        (Dash, Post, ["groups"]) => content::create(s, cx, store::GROUPS, spec::GROUP).await,
        (Dash, Post, ["points", "adjustments"]) => points::adjust(s, cx).await,
        (Dash, Put, ["groups", id]) => content::update(s, cx, store::GROUPS, id, spec::GROUP).await,
        (Dash, Delete, ["users", id]) => users::remove(s, cx, id).await,
        (Dash, Put, ["users", id, "role"]) => users::set_role(s, cx, id).await,
        (Dash, Delete, []) => users::delete_workspace(s, cx).await,

        // Internal: the user directory the gateway's delegation stage asks.
        (Internal, Get, ["users", id]) => users::directory(s, cx, id).await,

        _ => Err(no_route()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_area_workspace_and_rest() {
        let t = target("/app/v1/workspaces/ws-demo/missions/m%2D1").unwrap();
        assert_eq!(
            t,
            Target {
                area: Area::App,
                ws: "ws-demo".into(),
                rest: vec!["missions".into(), "m-1".into()],
            }
        );
        let t = target("/dashboard/v1/workspaces/ws-demo").unwrap();
        assert!(t.rest.is_empty());
    }

    #[test]
    fn odd_paths_match_nothing() {
        for p in [
            "",
            "/",
            "/app/v1/workspaces",
            "/app/v1/workspaces/",
            "/app/v2/workspaces/ws/missions",
            "/other/v1/workspaces/ws/missions",
            "/app/v1/workspaces/ws/missions/",
            "/app/v1/workspaces/ws//missions",
            "/app/v1/workspaces/ws/../ws2/missions",
            "/app/v1/workspaces/ws/%2e%2e/missions",
            "/app/v1/workspaces/ws/a%2fb",
            "/app/v1/workspaces/ws/a%00b",
            "/app/v1/workspaces/ws/%ff",
        ] {
            assert_eq!(
                target(p).err().map(|e| e.code()),
                Some("resource/not_found"),
                "{p:?}"
            );
        }
    }
}
