use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use super::*;

fn doc(ws: &str, c: &str, id: &str, body: Value) -> Document {
    Document {
        workspace_id: ws.into(),
        collection: c.into(),
        id: id.into(),
        body,
    }
}

fn open(dir: &Path) -> EmbeddedStore {
    EmbeddedStore::open(dir, || {
        vec![doc("ws-a", "things", "seeded", json!({"n": 0}))]
    })
    .unwrap()
}

#[tokio::test]
async fn writes_survive_a_reopen_and_the_seed_is_applied_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("backend");
    {
        let s = open(&dir);
        assert!(s.get("ws-a", "things", "seeded").await.unwrap().is_some());
        s.put("ws-a", "things", "x", json!({"v": 1})).await.unwrap();
        s.put("ws-a", "things", "y", json!({"v": 2})).await.unwrap();
        assert!(s.delete("ws-a", "things", "seeded").await.unwrap());
        s.merge(
            "ws-a",
            "things",
            "x",
            json!({"w": 3}).as_object().unwrap().clone(),
        )
        .await
        .unwrap();
        assert_eq!(
            s.add_to_field("ws-a", "bal", "u", "balance", 5, 0)
                .await
                .unwrap(),
            Some(5)
        );
    }
    let s = open(&dir);
    assert_eq!(
        s.get("ws-a", "things", "seeded").await.unwrap(),
        None,
        "the seed is not re-applied on reopen"
    );
    assert_eq!(
        s.get("ws-a", "things", "x").await.unwrap(),
        Some(json!({"v": 1, "w": 3}))
    );
    assert_eq!(
        s.get("ws-a", "bal", "u").await.unwrap(),
        Some(json!({"balance": 5}))
    );
    let ids: Vec<String> = s
        .list("ws-a", "things")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(ids, ["x", "y"]);
}

#[tokio::test]
async fn files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("backend");
    let s = open(&dir);
    s.put("ws-a", "c", "i", json!(1)).await.unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join(LOG)), 0o600);
    assert_eq!(mode(&dir), 0o700);
}

#[tokio::test]
async fn keys_are_tenant_scoped() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    s.put("ws-a", "missions", "m1", json!({"who": "a"}))
        .await
        .unwrap();
    s.put("ws-b", "missions", "m1", json!({"who": "b"}))
        .await
        .unwrap();
    assert_eq!(
        s.get("ws-a", "missions", "m1").await.unwrap(),
        Some(json!({"who": "a"}))
    );
    assert_eq!(
        s.get("ws-b", "missions", "m1").await.unwrap(),
        Some(json!({"who": "b"}))
    );
    assert!(s.list("ws-c", "missions").await.unwrap().is_empty());
    assert!(s.delete("ws-b", "missions", "m1").await.unwrap());
    assert!(s.get("ws-a", "missions", "m1").await.unwrap().is_some());
    assert!(!s.delete("ws-b", "missions", "m1").await.unwrap());
}

#[tokio::test]
async fn delete_workspace_drops_only_that_workspace_and_persists() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let s = open(tmp.path());
        s.put("ws-b", "missions", "m1", json!(1)).await.unwrap();
        s.put("ws-b", "users", "u1", json!(2)).await.unwrap();
        assert_eq!(s.delete_workspace("ws-a").await.unwrap(), 1);
        assert_eq!(s.delete_workspace("ws-a").await.unwrap(), 0);
        assert!(s.list("ws-a", "things").await.unwrap().is_empty());
        assert_eq!(s.list("ws-b", "missions").await.unwrap().len(), 1);
    }
    let s = open(tmp.path());
    assert!(s.list("ws-a", "things").await.unwrap().is_empty());
    assert_eq!(s.list("ws-b", "users").await.unwrap().len(), 1);
}

#[tokio::test]
async fn insert_and_add_to_field_are_conditional() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    assert!(s.insert("ws", "c", "k", json!(1)).await.unwrap());
    assert!(!s.insert("ws", "c", "k", json!(2)).await.unwrap());
    assert_eq!(s.get("ws", "c", "k").await.unwrap(), Some(json!(1)));
    assert_eq!(
        s.add_to_field("ws", "b", "u", "balance", 10, 0)
            .await
            .unwrap(),
        Some(10)
    );
    assert_eq!(
        s.add_to_field("ws", "b", "u", "balance", -11, 0)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.add_to_field("ws", "b", "u", "balance", -10, 0)
            .await
            .unwrap(),
        Some(0)
    );
    assert_eq!(
        s.add_to_field("ws", "b", "u", "balance", i64::MAX, 0)
            .await
            .unwrap(),
        Some(i64::MAX)
    );
    assert_eq!(
        s.add_to_field("ws", "b", "u", "balance", 1, 0)
            .await
            .unwrap(),
        None,
        "overflow is refused"
    );
    assert_eq!(
        s.merge("ws", "c", "missing", Map::new()).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn a_torn_last_line_is_dropped_but_corruption_refuses_to_open() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let s = open(tmp.path());
        s.put("ws", "c", "k", json!(1)).await.unwrap();
    }
    let log = tmp.path().join(LOG);
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(br#"{"op":"put","ws":"ws","c":"c","id":"z","do"#)
        .unwrap();
    drop(f);
    {
        let s = open(tmp.path());
        assert_eq!(s.get("ws", "c", "k").await.unwrap(), Some(json!(1)));
        assert_eq!(s.get("ws", "c", "z").await.unwrap(), None);
    }
    std::fs::write(&log, b"garbage\n{\"op\":\"dropWorkspace\",\"ws\":\"x\"}\n").unwrap();
    assert!(matches!(
        EmbeddedStore::open(tmp.path(), Vec::new),
        Err(StoreError::Corrupt(_))
    ));
}

#[tokio::test]
async fn a_second_open_is_refused_while_the_first_lives() {
    let tmp = tempfile::tempdir().unwrap();
    let first = open(tmp.path());
    assert!(matches!(
        EmbeddedStore::open(tmp.path(), Vec::new),
        Err(StoreError::Locked(_))
    ));
    drop(first);
    open(tmp.path());
}

#[tokio::test]
async fn the_log_is_compacted() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    for i in 0..1100 {
        s.put("ws", "c", "k", json!(i)).await.unwrap();
    }
    let lines = std::fs::read_to_string(tmp.path().join(LOG))
        .unwrap()
        .lines()
        .count();
    assert!(lines < 1100, "{lines} lines after compaction");
    drop(s);
    let s = open(tmp.path());
    assert_eq!(s.get("ws", "c", "k").await.unwrap(), Some(json!(1099)));
}

#[tokio::test]
async fn a_batch_is_one_record_and_survives_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let ops = vec![
        WriteOp::Put {
            collection: "c".into(),
            id: "a".into(),
            doc: json!(1),
        },
        WriteOp::Add {
            collection: "b".into(),
            id: "u".into(),
            field: "balance".into(),
            delta: 3,
            floor: 0,
        },
    ];
    {
        let s = open(tmp.path());
        let before = std::fs::read_to_string(tmp.path().join(LOG)).unwrap();
        assert!(s.transact("ws", ops).await.unwrap());
        let after = std::fs::read_to_string(tmp.path().join(LOG)).unwrap();
        assert_eq!(after.lines().count(), before.lines().count() + 1);
        assert!(after.lines().last().unwrap().contains(r#""op":"batch""#));
    }
    let s = open(tmp.path());
    assert_eq!(s.get("ws", "c", "a").await.unwrap(), Some(json!(1)));
    assert_eq!(
        s.get("ws", "b", "u").await.unwrap(),
        Some(json!({"balance": 3}))
    );
}

#[tokio::test]
async fn a_torn_batch_is_dropped_whole() {
    let tmp = tempfile::tempdir().unwrap();
    drop(open(tmp.path()));
    let log = tmp.path().join(LOG);
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    // A crash mid-append: the first write of the batch is complete on disk, the line is not.
    f.write_all(
        br#"{"op":"batch","ws":"ws","writes":[{"op":"put","c":"c","id":"a","doc":1},{"op":"put","c":"c","id":"b","d"#,
    )
    .unwrap();
    drop(f);
    let s = open(tmp.path());
    assert_eq!(s.get("ws", "c", "a").await.unwrap(), None);
    assert_eq!(s.get("ws", "c", "b").await.unwrap(), None);
}

#[tokio::test]
async fn expired_documents_are_dropped_when_the_log_is_compacted() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let s = open(tmp.path());
        s.put("ws", "idem", "old", json!({"expiresAt": 1}))
            .await
            .unwrap();
        s.put("ws", "idem", "new", json!({"expiresAt": 4_000_000_000_u64}))
            .await
            .unwrap();
    }
    drop(open(tmp.path()));
    let log = std::fs::read_to_string(tmp.path().join(LOG)).unwrap();
    assert!(!log.contains(r#""old""#), "{log}");
    assert!(log.contains(r#""new""#), "{log}");
}

async fn fresh(_test: &str) -> Option<(std::sync::Arc<dyn Store>, tempfile::TempDir)> {
    let tmp = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&tmp.path().join("backend"), Vec::new).unwrap();
    Some((std::sync::Arc::new(store), tmp))
}

/// The shared suite (`store/conformance.rs`) against the embedded store.
mod conformance {
    crate::store::conformance::conformance_suite!(super::fresh);
}
