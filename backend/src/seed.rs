//! The demo workspace `ws-demo`, written once when a store is new. Ids are fixed and readable
//! so demos, policies and tests can name them.

use serde_json::{Value, json};

use crate::store::{
    BADGES, BALANCES, CATALOG, CATEGORIES, COMPLETIONS, DEPARTMENTS, Document, GROUPS,
    LEADERBOARDS, LEARNING_PATHS, LEDGER, LEVELS, LEVELS_REACHED, MISSIONS, PREMIUM, USER_BADGES,
    USERS, completion_id,
};

/// The seeded workspace.
pub const DEMO_WS: &str = "ws-demo";

/// A seeded ledger entry's key: a log key made now (after the entries' `createdAt`, as every
/// log key is), so readers that stop at a period's first key see the seed like any entry.
fn seed_log_key(n: usize) -> String {
    let prefix = crate::store::log_key_prefix(crate::store::now_ms());
    format!("{prefix}-seed-{n:02}")
}

/// Every document of the demo workspace.
pub fn demo() -> Vec<Document> {
    let now = crate::clock::now();
    let mut out = Vec::new();
    let mut add = |collection: &str, id: &str, mut body: Value| {
        if let Some(map) = body.as_object_mut() {
            map.insert("id".into(), json!(id));
            map.entry("createdAt").or_insert_with(|| json!(now));
        }
        out.push(Document {
            workspace_id: DEMO_WS.into(),
            collection: collection.into(),
            id: id.into(),
            body,
        });
    };

    for (id, name, description, points, target) in [
        (
            "mission-welcome",
            "Welcome aboard",
            "Finish your profile.",
            50,
            1,
        ),
        (
            "mission-first-lesson",
            "First lesson",
            "Complete any lesson.",
            100,
            1,
        ),
        (
            "mission-streak",
            "Seven-day streak",
            "Learn seven days in a row.",
            200,
            7,
        ),
    ] {
        add(
            MISSIONS,
            id,
            json!({"name": name, "description": description, "points": points,
                   "targetCount": target, "status": "active"}),
        );
    }
    add(
        BADGES,
        "badge-starter",
        json!({"name": "Starter", "description": "Completed the welcome mission.",
               "trigger": "mission_completed", "missionId": "mission-welcome"}),
    );
    add(
        BADGES,
        "badge-scholar",
        json!({"name": "Scholar", "description": "Reached level 3.",
               "trigger": "level_reached", "levelId": "level-3"}),
    );
    for (id, name, threshold) in [
        ("level-1", "Beginner", 0),
        ("level-2", "Practitioner", 100),
        ("level-3", "Expert", 500),
    ] {
        add(LEVELS, id, json!({"name": name, "threshold": threshold}));
    }
    add(
        LEADERBOARDS,
        "leaderboard-weekly",
        json!({"name": "This week", "period": "weekly"}),
    );
    add(
        LEADERBOARDS,
        "leaderboard-monthly",
        json!({"name": "This month", "period": "monthly"}),
    );
    add(
        LEADERBOARDS,
        "leaderboard-all-time",
        json!({"name": "All time", "period": "all-time"}),
    );

    add(
        CATALOG,
        "item-intro",
        json!({"title": "Introduction", "description": "Start here.", "type": "article",
               "tier": "free", "category": "onboarding", "tags": ["basics"], "language": "en",
               "body": "Welcome to the learning catalog."}),
    );
    add(
        CATALOG,
        "item-safety",
        json!({"title": "Workplace safety", "description": "The basics.", "type": "video",
               "tier": "free", "category": "compliance", "tags": ["basics", "safety"], "language": "en",
               "body": "Keep walkways clear and report hazards."}),
    );
    add(
        CATALOG,
        "item-advanced-sql",
        json!({"title": "Advanced SQL", "description": "Joins, windows and injection.",
               "type": "article", "tier": "free", "category": "engineering", "tags": ["sql"], "language": "en",
               "body": "SELECT name FROM users WHERE id = 1 OR 1=1; -- why parameters matter. \
                        DROP TABLE students; UNION SELECT password FROM accounts"}),
    );
    add(
        CATALOG,
        "item-masterclass",
        json!({"title": "Leadership masterclass", "description": "For premium members.",
               "type": "course", "tier": "premium", "category": "leadership", "tags": ["management"], "language": "en",
               "body": "Module 1: leading through change."}),
    );
    for (id, name) in [
        ("onboarding", "Onboarding"),
        ("compliance", "Compliance"),
        ("engineering", "Engineering"),
        ("leadership", "Leadership"),
    ] {
        add(CATEGORIES, id, json!({"name": name}));
    }
    add(
        LEARNING_PATHS,
        "path-new-starter",
        json!({"title": "New starter", "description": "The first week.",
               "itemIds": ["item-intro", "item-safety"], "language": "en",
               "category": "onboarding"}),
    );
    add(
        PREMIUM,
        "premium-masterclass-video",
        json!({"title": "Masterclass video", "type": "video",
               "url": "https://media.example.com/masterclass.mp4"}),
    );
    add(
        PREMIUM,
        "premium-playbook",
        json!({"title": "Manager playbook", "type": "document",
               "body": "Chapter 1: one-on-ones that matter."}),
    );

    add(
        GROUPS,
        "group-engineering",
        json!({"name": "Engineering", "members": ["u-manager", "u-member"]}),
    );
    add(
        GROUPS,
        "group-sales",
        json!({"name": "Sales", "members": ["u-viewer"]}),
    );
    add(DEPARTMENTS, "engineering", json!({"name": "Engineering"}));
    add(DEPARTMENTS, "sales", json!({"name": "Sales"}));
    for (id, name, role, department) in [
        ("u-owner", "Olivia Owner", "Owner", None),
        ("u-admin", "Adam Admin", "Admin", None),
        ("u-manager", "Mona Manager", "Manager", Some("engineering")),
        ("u-member", "Max Member", "Member", Some("engineering")),
        ("u-viewer", "Vera Viewer", "Viewer", Some("sales")),
    ] {
        add(
            USERS,
            id,
            json!({"name": name, "email": format!("{id}@demo.example.com"), "role": role,
                   "department": department, "lang": "en", "timezone": "Europe/London"}),
        );
    }

    // Points: completions and ledger entries agree with the balances.
    let mut balances: Vec<(&str, i64)> = Vec::new();
    let mut ledger = 0;
    for (user, mission, points) in [
        ("u-manager", "mission-welcome", 50),
        ("u-manager", "mission-first-lesson", 100),
        ("u-manager", "mission-streak", 200),
        ("u-member", "mission-welcome", 50),
        ("u-admin", "mission-welcome", 50),
    ] {
        add(
            COMPLETIONS,
            &completion_id(user, mission),
            json!({"missionId": mission, "userId": user, "completedAt": now,
                   "pointsAwarded": points}),
        );
        ledger += 1;
        credit(&mut balances, user, points);
        let balance = balance_of(&balances, user);
        add(
            LEDGER,
            &seed_log_key(ledger),
            json!({"userId": user, "points": points, "reason": format!("mission {mission}"),
                   "missionId": mission, "balance": balance}),
        );
    }
    for (user, points, reason) in [
        ("u-member", 25, "welcome bonus"),
        ("u-viewer", 10, "welcome gift"),
    ] {
        ledger += 1;
        credit(&mut balances, user, points);
        let balance = balance_of(&balances, user);
        add(
            LEDGER,
            &seed_log_key(ledger),
            json!({"userId": user, "points": points, "reason": reason, "balance": balance}),
        );
    }
    // What the engine would have recorded for these completions and balances.
    for user in ["u-manager", "u-member", "u-admin"] {
        add(
            USER_BADGES,
            &completion_id(user, "badge-starter"),
            json!({"badgeId": "badge-starter", "userId": user, "name": "Starter",
                   "awardedAt": now}),
        );
    }
    for &(user, balance) in &balances {
        for (level, threshold) in [("level-1", 0), ("level-2", 100), ("level-3", 500)] {
            if balance >= threshold {
                add(
                    LEVELS_REACHED,
                    &completion_id(user, level),
                    json!({"levelId": level, "userId": user, "reachedAt": now}),
                );
            }
        }
    }
    for (user, balance) in balances {
        out.push(Document {
            workspace_id: DEMO_WS.into(),
            collection: BALANCES.into(),
            id: user.into(),
            body: json!({"balance": balance}),
        });
    }
    out
}

fn credit<'a>(balances: &mut Vec<(&'a str, i64)>, user: &'a str, points: i64) {
    match balances.iter_mut().find(|(u, _)| *u == user) {
        Some((_, b)) => *b += points,
        None => balances.push((user, points)),
    }
}

fn balance_of(balances: &[(&str, i64)], user: &str) -> i64 {
    balances
        .iter()
        .find(|(u, _)| *u == user)
        .map_or(0, |(_, b)| *b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_has_the_documented_ids() {
        let docs = demo();
        let has = |c: &str, id: &str| docs.iter().any(|d| d.collection == c && d.id == id);
        for id in ["mission-welcome", "mission-first-lesson", "mission-streak"] {
            assert!(has(MISSIONS, id), "{id}");
        }
        for id in [
            "item-intro",
            "item-safety",
            "item-advanced-sql",
            "item-masterclass",
        ] {
            assert!(has(CATALOG, id), "{id}");
        }
        for id in ["u-owner", "u-admin", "u-manager", "u-member", "u-viewer"] {
            assert!(has(USERS, id), "{id}");
        }
        assert!(has(BALANCES, "u-member"));
        assert!(docs.iter().all(|d| d.workspace_id == DEMO_WS));
    }
}
