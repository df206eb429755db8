//! The one behaviour every [`Store`] must have. Each check takes a fresh, empty store;
//! [`conformance_suite!`] turns them into `#[tokio::test]`s for one implementation.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{Document, Store, StoreError, WriteOp, seed_if_empty};

/// Expands to one multi-threaded `#[tokio::test]` per check of this module. `$fresh` is an
/// `async fn(&str) -> Option<(Arc<dyn Store>, impl Sized)>` giving an empty store (and whatever
/// must live as long as it) for the named test, or `None` to skip.
macro_rules! conformance_suite {
    ($fresh:path) => {
        $crate::store::conformance::conformance_suite!(@each $fresh;
            documents_round_trip,
            put_replaces_and_insert_is_conditional,
            merge_is_shallow_and_needs_a_live_object,
            add_to_field_keeps_the_floor_and_refuses_overflow,
            delete_reports_whether_there_was_a_document,
            list_is_ordered_by_id_and_scoped_to_the_collection,
            pages_cover_the_collection_without_gaps_or_duplicates,
            expired_documents_are_absent,
            transact_applies_every_write,
            a_failed_transact_writes_nothing,
            transact_refuses_batches_dynamodb_cannot_run,
            tenants_are_isolated_whatever_their_ids,
            delete_workspace_drops_only_that_workspace,
            concurrent_adds_lose_nothing,
            concurrent_inserts_have_one_winner,
            concurrent_debits_never_go_negative,
            seeding_fills_only_an_empty_workspace,
        );
    };
    (@each $fresh:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                if let Some((store, _keep)) = $fresh(stringify!($check)).await {
                    $crate::store::conformance::$check(store).await;
                }
            }
        )*
    };
}
pub(crate) use conformance_suite;

type S = Arc<dyn Store>;

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn now() -> i64 {
    super::now_secs() as i64
}

async fn ids(s: &S, ws: &str, c: &str) -> Vec<String> {
    s.list(ws, c)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

pub(crate) async fn documents_round_trip(s: S) {
    let doc = json!({
        "text": "héllo ✓ \"quoted\" \\ #:/",
        "empty": "",
        "int": -42,
        "large": 9_007_199_254_740_993_i64,
        "min": i64::MIN,
        "unsigned": u64::MAX,
        "float": 1.5,
        "yes": true,
        "nothing": null,
        "list": [1, "two", [3], {"four": 4}, null, false],
        "nested": {"deep": {"er": [true, -0.25]}, "a.b#c": 1},
        "": "an empty top-level key",
        "emptyList": [],
        "emptyObject": {},
        "a.b": 1,
        "#x": 2,
        ":y": 3,
        "with space": 4,
        "pk": "not the key",
        "v": "not the value",
        "ttl": "not the ttl",
    });
    s.put("ws", "docs", "full", doc.clone()).await.unwrap();
    assert_eq!(
        s.get("ws", "docs", "full").await.unwrap(),
        Some(doc.clone())
    );
    assert_eq!(
        s.list("ws", "docs").await.unwrap(),
        vec![("full".to_owned(), doc)]
    );
    for (id, scalar) in [
        ("number", json!(7)),
        ("string", json!("text")),
        ("list", json!([1, {"a": 2}])),
        ("bool", json!(false)),
        ("null", json!(null)),
        ("empty", json!({})),
    ] {
        s.put("ws", "scalars", id, scalar.clone()).await.unwrap();
        assert_eq!(s.get("ws", "scalars", id).await.unwrap(), Some(scalar));
    }
    assert_eq!(s.list("ws", "scalars").await.unwrap().len(), 6);
    assert_eq!(s.get("ws", "docs", "missing").await.unwrap(), None);
    assert_eq!(s.get("other", "docs", "full").await.unwrap(), None);
}

pub(crate) async fn put_replaces_and_insert_is_conditional(s: S) {
    s.put("ws", "c", "k", json!({"a": 1, "b": 2}))
        .await
        .unwrap();
    s.put("ws", "c", "k", json!({"c": 3})).await.unwrap();
    assert_eq!(s.get("ws", "c", "k").await.unwrap(), Some(json!({"c": 3})));
    s.put("ws", "c", "k", json!("scalar")).await.unwrap();
    assert_eq!(s.get("ws", "c", "k").await.unwrap(), Some(json!("scalar")));
    s.put("ws", "c", "k", json!({"d": 4})).await.unwrap();
    assert_eq!(s.get("ws", "c", "k").await.unwrap(), Some(json!({"d": 4})));

    assert!(s.insert("ws", "c", "new", json!({"n": 1})).await.unwrap());
    assert!(!s.insert("ws", "c", "new", json!({"n": 2})).await.unwrap());
    assert!(!s.insert("ws", "c", "k", json!({"n": 3})).await.unwrap());
    assert_eq!(
        s.get("ws", "c", "new").await.unwrap(),
        Some(json!({"n": 1}))
    );
    assert_eq!(s.get("ws", "c", "k").await.unwrap(), Some(json!({"d": 4})));
    assert!(s.delete("ws", "c", "new").await.unwrap());
    assert!(s.insert("ws", "c", "new", json!(5)).await.unwrap());
    assert_eq!(s.get("ws", "c", "new").await.unwrap(), Some(json!(5)));
}

pub(crate) async fn merge_is_shallow_and_needs_a_live_object(s: S) {
    s.put(
        "ws",
        "c",
        "k",
        json!({"a": 1, "o": {"x": 1, "y": 2}, "keep": true}),
    )
    .await
    .unwrap();
    let merged = s
        .merge(
            "ws",
            "c",
            "k",
            obj(json!({"a": 2, "o": {"z": 3}, "new": null})),
        )
        .await
        .unwrap();
    let want = json!({"a": 2, "o": {"z": 3}, "keep": true, "new": null});
    assert_eq!(merged, Some(want.clone()));
    assert_eq!(s.get("ws", "c", "k").await.unwrap(), Some(want.clone()));
    assert_eq!(
        s.merge("ws", "c", "k", Map::new()).await.unwrap(),
        Some(want),
        "an empty patch returns the document"
    );
    assert_eq!(
        s.merge("ws", "c", "missing", obj(json!({"a": 1})))
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.get("ws", "c", "missing").await.unwrap(), None);
    assert_eq!(
        s.merge("ws", "c", "missing", Map::new()).await.unwrap(),
        None
    );
    s.put("ws", "c", "scalar", json!(3)).await.unwrap();
    assert_eq!(
        s.merge("ws", "c", "scalar", obj(json!({"a": 1})))
            .await
            .unwrap(),
        None,
        "only an object is merged into"
    );
    assert_eq!(s.get("ws", "c", "scalar").await.unwrap(), Some(json!(3)));
    assert_eq!(
        s.merge("other", "c", "k", obj(json!({"a": 1})))
            .await
            .unwrap(),
        None
    );
}

pub(crate) async fn add_to_field_keeps_the_floor_and_refuses_overflow(s: S) {
    let add = |id: &'static str, delta: i64, floor: i64| {
        let s = s.clone();
        async move {
            s.add_to_field("ws", "bal", id, "balance", delta, floor)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        add("u", 10, 0).await,
        Some(10),
        "a missing document starts at 0"
    );
    assert_eq!(add("u", -11, 0).await, None);
    assert_eq!(add("u", -10, 0).await, Some(0));
    assert_eq!(add("u", -5, -5).await, Some(-5), "a negative floor");
    assert_eq!(add("u", 5, 0).await, Some(0));
    assert_eq!(add("u", i64::MAX, 0).await, Some(i64::MAX));
    assert_eq!(add("u", 1, 0).await, None, "overflow is refused");
    assert_eq!(add("u", 0, 0).await, Some(i64::MAX));
    assert_eq!(add("u", -1, i64::MAX).await, None, "never satisfiable");
    assert_eq!(
        s.get("ws", "bal", "u").await.unwrap(),
        Some(json!({"balance": i64::MAX}))
    );
    assert_eq!(add("v", -1, 0).await, None, "below the floor from 0");
    assert_eq!(
        s.get("ws", "bal", "v").await.unwrap(),
        None,
        "nothing created"
    );
    assert_eq!(add("w", -3, i64::MIN).await, Some(-3));
    assert_eq!(add("w", i64::MIN, i64::MIN).await, None, "underflow");

    s.put("ws", "bal", "x", json!({"name": "x", "balance": 4}))
        .await
        .unwrap();
    assert_eq!(add("x", 3, 0).await, Some(7));
    assert_eq!(
        s.get("ws", "bal", "x").await.unwrap(),
        Some(json!({"name": "x", "balance": 7})),
        "other fields are kept"
    );
    assert_eq!(
        s.add_to_field("ws", "bal", "x", "other", 2, 0)
            .await
            .unwrap(),
        Some(2),
        "a missing field starts at 0"
    );
    s.put("ws", "bal", "scalar", json!("not an object"))
        .await
        .unwrap();
    assert_eq!(add("scalar", 2, 0).await, Some(2));
    assert_eq!(
        s.get("ws", "bal", "scalar").await.unwrap(),
        Some(json!({"balance": 2})),
        "a non-object document becomes an object"
    );
}

pub(crate) async fn delete_reports_whether_there_was_a_document(s: S) {
    s.put("ws", "c", "k", json!({"a": 1})).await.unwrap();
    s.put("ws", "c", "scalar", json!(1)).await.unwrap();
    assert!(s.delete("ws", "c", "k").await.unwrap());
    assert!(!s.delete("ws", "c", "k").await.unwrap());
    assert!(s.delete("ws", "c", "scalar").await.unwrap());
    assert!(!s.delete("ws", "c", "never").await.unwrap());
    assert_eq!(s.get("ws", "c", "k").await.unwrap(), None);
    assert!(s.list("ws", "c").await.unwrap().is_empty());
}

pub(crate) async fn list_is_ordered_by_id_and_scoped_to_the_collection(s: S) {
    let mut want: Vec<String> = [
        "b", "a", "B", "é", "z", "~", "a#b", "a:b", "aa", "1", "10", "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for id in &want {
        s.put("ws", "things", id, json!({"id": id})).await.unwrap();
    }
    s.put("ws", "thing", "x", json!(1)).await.unwrap();
    s.put("ws", "thingss", "y", json!(1)).await.unwrap();
    s.put("ws", "things#more", "z", json!(1)).await.unwrap();
    s.put("ws2", "things", "w", json!(1)).await.unwrap();
    want.sort();
    let listed = s.list("ws", "things").await.unwrap();
    assert_eq!(
        listed.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        want
    );
    for (id, doc) in &listed {
        assert_eq!(doc, &json!({"id": id}));
    }
    assert_eq!(ids(&s, "ws", "thing").await, ["x"]);
    assert_eq!(ids(&s, "ws", "thingss").await, ["y"]);
    assert_eq!(ids(&s, "ws", "things#more").await, ["z"]);
    assert!(s.list("ws", "nothing").await.unwrap().is_empty());
    assert!(s.list("nobody", "things").await.unwrap().is_empty());
}

pub(crate) async fn pages_cover_the_collection_without_gaps_or_duplicates(s: S) {
    let past = now() - 100;
    let mut live = Vec::new();
    for i in 0..23 {
        let id = format!("id-{i:02}");
        s.put("ws", "items", &id, json!({"i": i})).await.unwrap();
        live.push(id);
    }
    // Expired documents in the middle and after the last live one must not show, nor leave
    // `more` set when only they remain.
    for id in ["id-05x", "id-06x", "id-07x", "zz-expired-1", "zz-expired-2"] {
        s.put("ws", "items", id, json!({"expiresAt": past}))
            .await
            .unwrap();
    }
    s.put("ws", "items-other", "id-99", json!(1)).await.unwrap();
    assert_eq!(ids(&s, "ws", "items").await, live);

    for limit in [1, 2, 5, 7, 22, 23, 24, 100] {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = s
                .list_page("ws", "items", after.as_deref(), limit)
                .await
                .unwrap();
            assert!(page.items.len() <= limit);
            seen.extend(page.items.iter().map(|(id, _)| id.clone()));
            if !page.more {
                break;
            }
            assert_eq!(
                page.items.len(),
                limit,
                "a page short of the limit has more"
            );
            after = page.items.last().map(|(id, _)| id.clone());
        }
        assert_eq!(seen, live, "limit {limit}");
    }

    let page = s.list_page("ws", "items", Some("id-10x"), 2).await.unwrap();
    assert_eq!(
        page.items
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        ["id-11", "id-12"],
        "after an id that does not exist"
    );
    assert!(page.more);
    assert_eq!(page.items[0].1, json!({"i": 11}));
    let page = s.list_page("ws", "items", Some("id-22"), 5).await.unwrap();
    assert!(page.items.is_empty() && !page.more);
    let page = s.list_page("ws", "items", None, 0).await.unwrap();
    assert!(page.items.is_empty() && page.more);
    let page = s.list_page("ws", "items", Some("id-21"), 1).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert!(!page.more, "only expired documents remain");
    let page = s.list_page("ws", "none", None, 10).await.unwrap();
    assert!(page.items.is_empty() && !page.more);
}

pub(crate) async fn expired_documents_are_absent(s: S) {
    let past = now() - 100;
    let future = now() + 3600;
    let put = |id: &'static str, doc: Value| {
        let s = s.clone();
        async move { s.put("ws", "idem", id, doc).await.unwrap() }
    };
    put("gone", json!({"expiresAt": past, "x": 1})).await;
    put("gone-float", json!({"expiresAt": past as f64 + 0.5})).await;
    put("kept", json!({"expiresAt": future})).await;
    put("text", json!({"expiresAt": "yesterday"})).await;
    put("nested", json!({"inner": {"expiresAt": past}})).await;
    assert_eq!(s.get("ws", "idem", "gone").await.unwrap(), None);
    assert_eq!(s.get("ws", "idem", "gone-float").await.unwrap(), None);
    assert!(s.get("ws", "idem", "kept").await.unwrap().is_some());
    assert!(s.get("ws", "idem", "text").await.unwrap().is_some());
    assert!(s.get("ws", "idem", "nested").await.unwrap().is_some());
    assert_eq!(ids(&s, "ws", "idem").await, ["kept", "nested", "text"]);
    let page = s.list_page("ws", "idem", None, 10).await.unwrap();
    assert_eq!(page.items.len(), 3);

    // Conditions see an expired document as missing.
    assert!(
        s.insert("ws", "idem", "gone", json!({"fresh": 1}))
            .await
            .unwrap()
    );
    assert_eq!(
        s.get("ws", "idem", "gone").await.unwrap(),
        Some(json!({"fresh": 1}))
    );
    put("gone2", json!({"expiresAt": past, "a": 1})).await;
    assert_eq!(
        s.merge("ws", "idem", "gone2", obj(json!({"b": 2})))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.merge("ws", "idem", "gone2", Map::new()).await.unwrap(),
        None
    );
    assert!(!s.delete("ws", "idem", "gone2").await.unwrap());
    assert_eq!(s.get("ws", "idem", "gone2").await.unwrap(), None);
    put(
        "gone3",
        json!({"expiresAt": past, "balance": 100, "other": "x"}),
    )
    .await;
    assert_eq!(
        s.add_to_field("ws", "idem", "gone3", "balance", 5, 0)
            .await
            .unwrap(),
        Some(5),
        "an expired document starts afresh"
    );
    assert_eq!(
        s.get("ws", "idem", "gone3").await.unwrap(),
        Some(json!({"balance": 5}))
    );
    put("gone4", json!({"expiresAt": past, "balance": 100})).await;
    assert_eq!(
        s.add_to_field("ws", "idem", "gone4", "balance", -5, 0)
            .await
            .unwrap(),
        None,
        "the expired balance does not count"
    );

    // Expiring by merge, and a transact over expired documents.
    assert!(
        s.merge("ws", "idem", "kept", obj(json!({"expiresAt": past})))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(s.get("ws", "idem", "kept").await.unwrap(), None);
    put("t1", json!({"expiresAt": past})).await;
    put("t2", json!({"expiresAt": past, "n": 9})).await;
    put("t3", json!({"expiresAt": past})).await;
    let ok = s
        .transact(
            "ws",
            vec![
                WriteOp::Insert {
                    collection: "idem".into(),
                    id: "t1".into(),
                    doc: json!({"ok": 1}),
                },
                WriteOp::Add {
                    collection: "idem".into(),
                    id: "t2".into(),
                    field: "n".into(),
                    delta: 1,
                    floor: 0,
                },
            ],
        )
        .await
        .unwrap();
    assert!(ok);
    assert_eq!(
        s.get("ws", "idem", "t1").await.unwrap(),
        Some(json!({"ok": 1}))
    );
    assert_eq!(
        s.get("ws", "idem", "t2").await.unwrap(),
        Some(json!({"n": 1}))
    );
    for op in [
        WriteOp::Merge {
            collection: "idem".into(),
            id: "t3".into(),
            patch: obj(json!({"a": 1})),
        },
        WriteOp::Delete {
            collection: "idem".into(),
            id: "t3".into(),
        },
    ] {
        assert!(!s.transact("ws", vec![op]).await.unwrap());
    }

    // Only live documents count when a workspace goes.
    s.put("ws-x", "c", "live", json!({"expiresAt": future}))
        .await
        .unwrap();
    s.put("ws-x", "c", "dead", json!({"expiresAt": past}))
        .await
        .unwrap();
    assert_eq!(s.delete_workspace("ws-x").await.unwrap(), 1);
}

fn batch_ok() -> Vec<WriteOp> {
    vec![
        WriteOp::Insert {
            collection: "c".into(),
            id: "new".into(),
            doc: json!({"n": 1}),
        },
        WriteOp::Put {
            collection: "c".into(),
            id: "put".into(),
            doc: json!({"p": 1}),
        },
        WriteOp::Merge {
            collection: "c".into(),
            id: "existing".into(),
            patch: obj(json!({"w": 2})),
        },
        WriteOp::Add {
            collection: "bal".into(),
            id: "u".into(),
            field: "balance".into(),
            delta: -3,
            floor: 0,
        },
        WriteOp::Delete {
            collection: "c".into(),
            id: "doomed".into(),
        },
        WriteOp::Merge {
            collection: "c".into(),
            id: "untouched".into(),
            patch: Map::new(),
        },
    ]
}

async fn transact_setup(s: &S) {
    s.put("ws", "c", "existing", json!({"v": 1})).await.unwrap();
    s.put("ws", "c", "doomed", json!({"d": 1})).await.unwrap();
    s.put("ws", "c", "untouched", json!({"u": 1}))
        .await
        .unwrap();
    s.put("ws", "c", "present", json!({"p": 0})).await.unwrap();
    s.add_to_field("ws", "bal", "u", "balance", 10, 0)
        .await
        .unwrap();
}

pub(crate) async fn transact_applies_every_write(s: S) {
    transact_setup(&s).await;
    assert!(s.transact("ws", batch_ok()).await.unwrap());
    assert_eq!(
        s.get("ws", "c", "new").await.unwrap(),
        Some(json!({"n": 1}))
    );
    assert_eq!(
        s.get("ws", "c", "put").await.unwrap(),
        Some(json!({"p": 1}))
    );
    assert_eq!(
        s.get("ws", "c", "existing").await.unwrap(),
        Some(json!({"v": 1, "w": 2}))
    );
    assert_eq!(
        s.get("ws", "bal", "u").await.unwrap(),
        Some(json!({"balance": 7}))
    );
    assert_eq!(s.get("ws", "c", "doomed").await.unwrap(), None);
    assert_eq!(
        s.get("ws", "c", "untouched").await.unwrap(),
        Some(json!({"u": 1}))
    );
    assert!(
        s.transact("ws", Vec::new()).await.unwrap(),
        "an empty batch"
    );
    assert!(
        s.transact(
            "ws",
            vec![WriteOp::Add {
                collection: "bal".into(),
                id: "fresh".into(),
                field: "balance".into(),
                delta: 4,
                floor: 0,
            }]
        )
        .await
        .unwrap()
    );
    assert_eq!(
        s.get("ws", "bal", "fresh").await.unwrap(),
        Some(json!({"balance": 4}))
    );
    assert_eq!(s.get("other", "c", "new").await.unwrap(), None);
}

pub(crate) async fn a_failed_transact_writes_nothing(s: S) {
    transact_setup(&s).await;
    let failing = [
        WriteOp::Insert {
            collection: "c".into(),
            id: "present".into(),
            doc: json!({}),
        },
        WriteOp::Merge {
            collection: "c".into(),
            id: "missing".into(),
            patch: obj(json!({"a": 1})),
        },
        WriteOp::Merge {
            collection: "c".into(),
            id: "missing".into(),
            patch: Map::new(),
        },
        WriteOp::Add {
            collection: "bal".into(),
            id: "other".into(),
            field: "balance".into(),
            delta: -1,
            floor: 0,
        },
        WriteOp::Add {
            collection: "bal".into(),
            id: "other".into(),
            field: "balance".into(),
            delta: -1,
            floor: i64::MAX,
        },
        WriteOp::Delete {
            collection: "c".into(),
            id: "missing".into(),
        },
    ];
    for bad in failing {
        for at_start in [false, true] {
            let mut ops = batch_ok();
            if at_start {
                ops.insert(0, bad.clone());
            } else {
                ops.push(bad.clone());
            }
            assert!(!s.transact("ws", ops).await.unwrap(), "{bad:?}");
            assert_eq!(s.get("ws", "c", "new").await.unwrap(), None, "{bad:?}");
            assert_eq!(s.get("ws", "c", "put").await.unwrap(), None);
            assert_eq!(
                s.get("ws", "c", "existing").await.unwrap(),
                Some(json!({"v": 1}))
            );
            assert_eq!(
                s.get("ws", "bal", "u").await.unwrap(),
                Some(json!({"balance": 10}))
            );
            assert_eq!(
                s.get("ws", "c", "doomed").await.unwrap(),
                Some(json!({"d": 1}))
            );
            assert_eq!(s.get("ws", "bal", "other").await.unwrap(), None);
            assert_eq!(s.get("ws", "c", "missing").await.unwrap(), None);
        }
    }
    // The overdraft alone, too.
    let overdraft = WriteOp::Add {
        collection: "bal".into(),
        id: "u".into(),
        field: "balance".into(),
        delta: -11,
        floor: 0,
    };
    let mut ops = batch_ok();
    ops.retain(|op| op.key() != ("bal", "u"));
    ops.push(overdraft);
    assert!(!s.transact("ws", ops).await.unwrap());
    assert_eq!(s.get("ws", "c", "new").await.unwrap(), None);
    assert_eq!(
        s.get("ws", "bal", "u").await.unwrap(),
        Some(json!({"balance": 10}))
    );
}

pub(crate) async fn transact_refuses_batches_dynamodb_cannot_run(s: S) {
    let puts = |n: usize| {
        (0..n)
            .map(|i| WriteOp::Put {
                collection: "c".into(),
                id: format!("k{i}"),
                doc: json!(i),
            })
            .collect::<Vec<_>>()
    };
    assert!(matches!(
        s.transact("ws", puts(26)).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(s.list("ws", "c").await.unwrap().is_empty());
    let mut twice = puts(3);
    twice.push(WriteOp::Delete {
        collection: "c".into(),
        id: "k1".into(),
    });
    assert!(matches!(
        s.transact("ws", twice).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(s.list("ws", "c").await.unwrap().is_empty());
    assert!(s.transact("ws", puts(25)).await.unwrap());
    assert_eq!(s.list("ws", "c").await.unwrap().len(), 25);
}

/// Workspace and collection names built to collide if keys were joined naively.
const TENANTS: [(&str, &str); 10] = [
    ("a", "b#c"),
    ("a#b", "c"),
    ("a#b#c", "x"),
    ("a#", "b#c"),
    ("#a", "b#c"),
    ("a:1", "c"),
    ("1:a", "c"),
    ("1", "a:c"),
    ("a b", "c"),
    ("ab", "c"),
];

pub(crate) async fn tenants_are_isolated_whatever_their_ids(s: S) {
    for (n, (ws, c)) in TENANTS.iter().enumerate() {
        s.put(ws, c, "same", json!({"n": n})).await.unwrap();
        s.put(ws, "shared", "same", json!({"n": n})).await.unwrap();
    }
    for (n, (ws, c)) in TENANTS.iter().enumerate() {
        assert_eq!(s.get(ws, c, "same").await.unwrap(), Some(json!({"n": n})));
        assert_eq!(s.list(ws, c).await.unwrap().len(), 1, "{ws} {c}");
        assert_eq!(
            s.list(ws, "shared").await.unwrap(),
            vec![("same".to_owned(), json!({"n": n}))]
        );
    }
    // An id with separators stays inside its collection.
    s.put("t", "c", "d#e", json!(1)).await.unwrap();
    s.put("t", "c#d", "e", json!(2)).await.unwrap();
    s.put("t", "c", "2:", json!(3)).await.unwrap();
    assert_eq!(s.get("t", "c", "d#e").await.unwrap(), Some(json!(1)));
    assert_eq!(s.get("t", "c#d", "e").await.unwrap(), Some(json!(2)));
    assert_eq!(ids(&s, "t", "c").await, ["2:", "d#e"]);
    assert_eq!(ids(&s, "t", "c#d").await, ["e"]);

    // Conditional writes and deletes see only their own tenant.
    assert!(s.insert("a", "c", "same", json!(0)).await.unwrap());
    assert!(!s.insert("a", "b#c", "same", json!(0)).await.unwrap());
    assert_eq!(
        s.add_to_field("ab", "c", "same", "n", 1, 0).await.unwrap(),
        Some(10)
    );
    assert!(s.delete("a#b", "c", "same").await.unwrap());
    assert_eq!(
        s.get("a", "b#c", "same").await.unwrap(),
        Some(json!({"n": 0}))
    );
    assert_eq!(
        s.get("a#b#c", "x", "same").await.unwrap(),
        Some(json!({"n": 2}))
    );

    assert_eq!(s.delete_workspace("a").await.unwrap(), 3);
    assert_eq!(s.get("a", "b#c", "same").await.unwrap(), None);
    for (n, (ws, c)) in TENANTS.iter().enumerate().skip(2) {
        let want = if *ws == "ab" { n + 1 } else { n };
        assert_eq!(
            s.get(ws, c, "same").await.unwrap(),
            Some(json!({"n": want})),
            "{ws} survives deleting `a`"
        );
    }
}

pub(crate) async fn delete_workspace_drops_only_that_workspace(s: S) {
    for i in 0..30 {
        s.put("doomed", "missions", &format!("m{i:02}"), json!({"i": i}))
            .await
            .unwrap();
    }
    s.put("doomed", "users", "u1", json!({"u": 1}))
        .await
        .unwrap();
    s.put("doomed", "scalars", "s", json!(1)).await.unwrap();
    s.put("kept", "missions", "m00", json!({"kept": true}))
        .await
        .unwrap();
    s.put("doomed-too", "users", "u1", json!(1)).await.unwrap();
    assert_eq!(s.delete_workspace("doomed").await.unwrap(), 32);
    assert_eq!(s.delete_workspace("doomed").await.unwrap(), 0);
    assert!(s.list("doomed", "missions").await.unwrap().is_empty());
    assert_eq!(s.get("doomed", "users", "u1").await.unwrap(), None);
    assert_eq!(s.get("doomed", "scalars", "s").await.unwrap(), None);
    assert_eq!(ids(&s, "kept", "missions").await, ["m00"]);
    assert_eq!(ids(&s, "doomed-too", "users").await, ["u1"]);
    assert_eq!(s.delete_workspace("never-existed").await.unwrap(), 0);
    assert!(s.insert("doomed", "users", "u1", json!(2)).await.unwrap());
    assert_eq!(
        s.get("doomed", "users", "u1").await.unwrap(),
        Some(json!(2))
    );
}

pub(crate) async fn concurrent_adds_lose_nothing(s: S) {
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.add_to_field("ws", "bal", "u", "points", 1, 0).await })
        })
        .collect();
    let mut seen = BTreeSet::new();
    for t in tasks {
        seen.insert(t.await.unwrap().unwrap().expect("no floor to hit"));
    }
    assert_eq!(seen, (1..=50).collect(), "every add saw its own total");
    assert_eq!(
        s.get("ws", "bal", "u").await.unwrap(),
        Some(json!({"points": 50}))
    );
}

pub(crate) async fn concurrent_inserts_have_one_winner(s: S) {
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { (i, s.insert("ws", "c", "k", json!({"by": i})).await) })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        let (i, won) = t.await.unwrap();
        if won.unwrap() {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(
        s.get("ws", "c", "k").await.unwrap(),
        Some(json!({"by": winners[0]}))
    );
}

pub(crate) async fn concurrent_debits_never_go_negative(s: S) {
    assert_eq!(
        s.add_to_field("ws", "balances", "u", "balance", 10, 0)
            .await
            .unwrap(),
        Some(10)
    );
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.transact(
                    "ws",
                    vec![
                        WriteOp::Add {
                            collection: "balances".into(),
                            id: "u".into(),
                            field: "balance".into(),
                            delta: -1,
                            floor: 0,
                        },
                        WriteOp::Insert {
                            collection: "ledger".into(),
                            id: format!("entry-{i:02}"),
                            doc: json!({"delta": -1}),
                        },
                    ],
                )
                .await
            })
        })
        .collect();
    let mut succeeded = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() {
            succeeded += 1;
        }
    }
    let balance = s.get("ws", "balances", "u").await.unwrap();
    let ledger = s.list("ws", "ledger").await.unwrap().len();
    let seen =
        format!("{succeeded} debits succeeded, balance {balance:?}, {ledger} ledger entries");
    assert_eq!(balance, Some(json!({"balance": 0})), "{seen}");
    assert_eq!(ledger, 10, "{seen}");
    assert_eq!(succeeded, 10, "{seen}");
}

pub(crate) async fn seeding_fills_only_an_empty_workspace(s: S) {
    let docs = |tag: &str| {
        [("a", "1"), ("a", "2"), ("b", "1")]
            .into_iter()
            .map(|(c, id)| Document {
                workspace_id: "demo".into(),
                collection: c.into(),
                id: id.into(),
                body: json!({"tag": tag}),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(seed_if_empty(&*s, docs("first")).await.unwrap(), 3);
    assert_eq!(seed_if_empty(&*s, docs("second")).await.unwrap(), 0);
    assert_eq!(
        s.get("demo", "a", "1").await.unwrap(),
        Some(json!({"tag": "first"}))
    );
    assert!(s.delete("demo", "a", "1").await.unwrap());
    assert_eq!(
        seed_if_empty(&*s, docs("third")).await.unwrap(),
        0,
        "a workspace with documents left is not seeded again"
    );
    assert_eq!(s.delete_workspace("demo").await.unwrap(), 2);
    let (x, y) = tokio::join!(seed_if_empty(&*s, docs("x")), seed_if_empty(&*s, docs("y")));
    assert_eq!(
        x.unwrap() + y.unwrap(),
        3,
        "two starters write each document once"
    );
    assert_eq!(s.list("demo", "a").await.unwrap().len(), 2);
    assert_eq!(s.list("demo", "b").await.unwrap().len(), 1);
}
