//! The route table: the request path split into area, workspace and the rest, and one match
//! from (area, method, rest) to a handler. Anything unmatched is 404 `resource/not_found`.

use percent_encoding::percent_decode_str;

use crate::error::ApiError;
use crate::handlers::validate as spec;
use crate::handlers::{Area, Ctx, Reply, Verb, catalog, content, gamify, points, users};
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
    use store::{
        BADGES, CATALOG, CATEGORIES, GROUPS, LEADERBOARDS, LEARNING_PATHS, LEVELS, MISSIONS, USERS,
    };
    let rest: Vec<&str> = cx.rest.iter().map(String::as_str).collect();
    match (cx.area, cx.verb, rest.as_slice()) {
        // App: end users.
        (App, Get, ["me"]) => points::me(s, cx).await,
        (App, Get, ["me", "activities"]) => gamify::activities(s, cx, true).await,
        (App, Get, ["missions"]) => content::list(s, cx, MISSIONS).await,
        (App, Get, ["missions", id]) => gamify::mission_for_user(s, cx, id).await,
        (App, Post, ["missions", id, "participations"]) => gamify::join(s, cx, id).await,
        (App, Post, ["missions", id, "activities"]) => gamify::record_activity(s, cx, id).await,
        (App, Post, ["missions", id, "complete"]) => gamify::complete(s, cx, id).await,
        (App, Get, ["badges"]) => content::list(s, cx, BADGES).await,
        (App, Get, ["levels"]) => content::levels(s, cx).await,
        (App, Get, ["points"]) => points::mine(s, cx).await,
        (App, Post, ["points"]) => points::award(s, cx).await,
        (App, Get, ["groups"]) => content::list(s, cx, GROUPS).await,
        (App, Get, ["catalog"]) => content::catalog_list(s, cx).await,
        (App, Get, ["catalog", id]) => content::catalog_item(s, cx, id).await,
        (App, Get, ["categories"]) => content::list(s, cx, CATEGORIES).await,
        (App, Get, ["learning-paths"]) => catalog::list_paths(s, cx).await,
        (App, Get, ["learning-paths", id]) => catalog::get_path(s, cx, id).await,
        (App, Get, ["leaderboards"]) => points::leaderboards(s, cx).await,
        (App, Get, ["leaderboards", id]) => points::leaderboard(s, cx, id).await,
        (App, Get, ["leaderboards", id, "around-me"]) => points::around_me(s, cx, id).await,
        (App, Get, ["premium-content"]) => content::premium(s, cx, None).await,
        (App, Get, ["premium-content", id]) => content::premium(s, cx, Some(id)).await,

        // Dashboard: reads.
        (Dash, Get, ["missions"]) => content::list(s, cx, MISSIONS).await,
        (Dash, Get, ["missions", id]) => content::get(s, cx, MISSIONS, id).await,
        (Dash, Get, ["missions", id, "participants"]) => gamify::participants(s, cx, id).await,
        (Dash, Get, ["leaderboards"]) => points::leaderboards(s, cx).await,
        (Dash, Get, ["leaderboards", id]) => points::leaderboard(s, cx, id).await,
        (Dash, Get, ["badges"]) => content::list(s, cx, BADGES).await,
        (Dash, Get, ["levels"]) => content::levels(s, cx).await,
        (Dash, Get, ["catalog"]) => content::catalog_list(s, cx).await,
        (Dash, Get, ["catalog", id]) => content::get(s, cx, CATALOG, id).await,
        (Dash, Get, ["categories"]) => content::list(s, cx, CATEGORIES).await,
        (Dash, Get, ["learning-paths"]) => catalog::list_paths(s, cx).await,
        (Dash, Get, ["learning-paths", id]) => catalog::get_path(s, cx, id).await,
        (Dash, Get, ["users"]) => content::list(s, cx, USERS).await,
        (Dash, Get, ["users", id]) => users::get(s, cx, id).await,
        (Dash, Get, ["groups"]) => content::list(s, cx, GROUPS).await,
        (Dash, Get, ["groups", id]) => content::get(s, cx, GROUPS, id).await,
        (Dash, Get, ["activities"]) => gamify::activities(s, cx, false).await,
        (Dash, Get, ["points", "ledger"]) => points::ledger(s, cx).await,
        (Dash, Get, ["departments", id, "reports"]) => users::report(s, cx, id).await,

        // Dashboard: content writes.
        (Dash, Post, ["missions"]) => content::create(s, cx, MISSIONS, spec::MISSION).await,
        (Dash, Put, ["missions", id]) => content::update(s, cx, MISSIONS, id, spec::MISSION).await,
        (Dash, Delete, ["missions", id]) => content::remove(s, cx, MISSIONS, id).await,
        (Dash, Post, ["leaderboards"]) => {
            content::create(s, cx, LEADERBOARDS, spec::LEADERBOARD).await
        }
        (Dash, Put, ["leaderboards", id]) => {
            content::update(s, cx, LEADERBOARDS, id, spec::LEADERBOARD).await
        }
        (Dash, Delete, ["leaderboards", id]) => content::remove(s, cx, LEADERBOARDS, id).await,
        (Dash, Post, ["badges"]) => gamify::create_badge(s, cx).await,
        (Dash, Put, ["badges", id]) => gamify::update_badge(s, cx, id).await,
        (Dash, Delete, ["badges", id]) => content::remove(s, cx, BADGES, id).await,
        (Dash, Post, ["levels"]) => content::create(s, cx, LEVELS, spec::LEVEL).await,
        (Dash, Put, ["levels", id]) => content::update(s, cx, LEVELS, id, spec::LEVEL).await,
        (Dash, Delete, ["levels", id]) => content::remove(s, cx, LEVELS, id).await,
        (Dash, Post, ["catalog"]) => content::create(s, cx, CATALOG, spec::CATALOG_ITEM).await,
        (Dash, Put, ["catalog", id]) => {
            content::update(s, cx, CATALOG, id, spec::CATALOG_ITEM).await
        }
        (Dash, Delete, ["catalog", id]) => content::remove(s, cx, CATALOG, id).await,
        (Dash, Post, ["categories"]) => catalog::create_category(s, cx, spec::CATEGORY).await,
        (Dash, Put, ["categories", id]) => {
            content::update(s, cx, CATEGORIES, id, spec::CATEGORY).await
        }
        (Dash, Delete, ["categories", id]) => content::remove(s, cx, CATEGORIES, id).await,
        (Dash, Post, ["learning-paths"]) => catalog::create_path(s, cx).await,
        (Dash, Put, ["learning-paths", id]) => catalog::update_path(s, cx, id).await,
        (Dash, Delete, ["learning-paths", id]) => content::remove(s, cx, LEARNING_PATHS, id).await,

        // Dashboard: administration.
        (Dash, Post, ["users"]) => users::create(s, cx).await,
        (Dash, Post, ["groups"]) => content::create(s, cx, GROUPS, spec::GROUP).await,
        (Dash, Put, ["groups", id]) => content::update(s, cx, GROUPS, id, spec::GROUP).await,
        (Dash, Delete, ["groups", id]) => content::remove(s, cx, GROUPS, id).await,
        (Dash, Post, ["points", "adjustments"]) => points::adjust(s, cx).await,
        (Dash, Put, ["users", id]) => content::update(s, cx, USERS, id, spec::USER_UPDATE).await,
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
