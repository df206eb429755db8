//! The DynamoDB store against a real DynamoDB-compatible server (moto), through the shared
//! suite (`store/conformance.rs`) and checks of its own item layout.
//!
//! `scripts/test.sh` starts `moto_server` and exports its URL as
//! `CEDARGATE_TEST_DYNAMODB_ENDPOINT`. Without it these tests fail under `CI=true` and are
//! skipped (with a notice) elsewhere. Every test gets a table of its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use serde_json::json;

use super::*;

const ENV: &str = "CEDARGATE_TEST_DYNAMODB_ENDPOINT";

/// The shared test server, or `None` (skip) outside CI.
fn endpoint(test: &str) -> Option<String> {
    match std::env::var(ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{ENV} is not set under CI=true: scripts/test.sh starts moto_server and sets it")
        }
        _ => {
            eprintln!(
                "NOTICE: {test} skipped: {ENV} is not set (run scripts/test.sh, or start moto_server and export it)"
            );
            None
        }
    }
}

fn client(endpoint: &str) -> Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(endpoint)
        .build();
    Client::from_conf(config)
}

fn unique_table() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "cedargate-backend-test-{t:x}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A store over a new table, and its client.
async fn store(test: &str) -> Option<(DynamoDbStore, Client)> {
    let client = client(&endpoint(test)?);
    let table = unique_table();
    create_table(&client, &table).await.unwrap();
    Some((DynamoDbStore::new(client.clone(), table), client))
}

async fn fresh(test: &str) -> Option<(Arc<dyn Store>, ())> {
    let (store, _) = store(test).await?;
    Some((Arc::new(store), ()))
}

/// The shared suite against DynamoDB.
mod conformance {
    crate::store::conformance::conformance_suite!(super::fresh);
}

async fn raw(client: &Client, table: &str) -> Vec<HashMap<String, AttributeValue>> {
    client
        .scan()
        .table_name(table)
        .send()
        .await
        .unwrap()
        .items()
        .to_vec()
}

fn s(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name)?.as_s().ok().cloned()
}

fn n(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name)?.as_n().ok().cloned()
}

#[tokio::test]
async fn create_table_is_idempotent_and_turns_on_ttl() {
    let Some((store, client)) = store("create_table_is_idempotent_and_turns_on_ttl").await else {
        return;
    };
    create_table(&client, store.table()).await.unwrap();
    let ttl = client
        .describe_time_to_live()
        .table_name(store.table())
        .send()
        .await
        .unwrap();
    let d = ttl.time_to_live_description().unwrap();
    assert_eq!(d.attribute_name(), Some("ttl"));
    let described = client
        .describe_table()
        .table_name(store.table())
        .send()
        .await
        .unwrap();
    let t = described.table().unwrap();
    assert_eq!(
        t.billing_mode_summary().and_then(|b| b.billing_mode()),
        Some(&aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
    );
}

#[tokio::test]
async fn items_are_keyed_by_workspace_and_carry_a_ttl() {
    let Some((store, client)) = store("items_are_keyed_by_workspace_and_carry_a_ttl").await else {
        return;
    };
    store
        .put(
            "ws#1",
            "idem",
            "k",
            json!({"expiresAt": 1_900_000_000.5, "a": 1}),
        )
        .await
        .unwrap();
    store.put("ws#1", "scalars", "v", json!(3)).await.unwrap();
    let items = raw(&client, store.table()).await;
    assert_eq!(items.len(), 2);
    for item in &items {
        assert_eq!(s(item, "pk").as_deref(), Some("ws#1"));
    }
    let idem = items
        .iter()
        .find(|i| s(i, "sk").as_deref() == Some("4:idem#k"))
        .expect("the sort key is the length-prefixed collection, then the id");
    assert_eq!(n(idem, "ttl").as_deref(), Some("1900000001"));
    assert_eq!(n(idem, "f_a").as_deref(), Some("1"));

    // A merge moves the TTL with `expiresAt`, or drops it when `expiresAt` is no number.
    let patch = |v: serde_json::Value| v.as_object().unwrap().clone();
    store
        .merge(
            "ws#1",
            "idem",
            "k",
            patch(json!({"expiresAt": 2_000_000_000})),
        )
        .await
        .unwrap();
    let ttl = |items: Vec<HashMap<String, AttributeValue>>| {
        items
            .iter()
            .find(|i| s(i, "sk").as_deref() == Some("4:idem#k"))
            .and_then(|i| n(i, "ttl"))
    };
    assert_eq!(
        ttl(raw(&client, store.table()).await).as_deref(),
        Some("2000000000")
    );
    store
        .merge("ws#1", "idem", "k", patch(json!({"expiresAt": "never"})))
        .await
        .unwrap();
    assert_eq!(ttl(raw(&client, store.table()).await), None);
}

#[tokio::test]
async fn a_missing_table_is_unavailable_not_a_panic() {
    let Some(endpoint) = endpoint("a_missing_table_is_unavailable_not_a_panic") else {
        return;
    };
    let store = DynamoDbStore::new(client(&endpoint), unique_table());
    assert!(matches!(
        store.get("ws", "c", "k").await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.insert("ws", "c", "k", json!(1)).await,
        Err(StoreError::Unavailable(_))
    ));
}

#[test]
fn spawn_seeds_the_demo_workspace_once_and_writes_no_data_dir() {
    let Some(endpoint) = endpoint("spawn_seeds_the_demo_workspace_once_and_writes_no_data_dir")
    else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = client(&endpoint);
    let table = unique_table();
    rt.block_on(create_table(&client, &table)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = || crate::BackendConfig {
        data_dir: dir.path().to_owned(),
        listen: crate::Listen::Tcp("127.0.0.1:0".parse().unwrap()),
        assertion_key: crate::testing::KEY.to_vec(),
        store: crate::StoreChoice::DynamoDb {
            client: client.clone(),
            table: table.clone(),
            create_table: false,
        },
        idempotency_ttl: std::time::Duration::from_secs(300),
    };
    crate::spawn(cfg()).unwrap();
    let count = || rt.block_on(raw(&client, &table)).len();
    let seeded = count();
    let demo = crate::seed::demo();
    assert_eq!(seeded, demo.len());
    let store = DynamoDbStore::new(client.clone(), table.clone());
    let ledger = rt
        .block_on(store.list(crate::seed::DEMO_WS, crate::store::LEDGER))
        .unwrap();
    for d in &demo {
        let found = if d.collection == crate::store::LEDGER {
            // Seeded ledger keys are log keys made at seeding time: match their suffix.
            let suffix = d.id.split_once('-').map_or("", |(_, s)| s);
            ledger.iter().any(|(id, _)| id.ends_with(suffix))
        } else {
            rt.block_on(store.get(&d.workspace_id, &d.collection, &d.id))
                .unwrap()
                .is_some()
        };
        assert!(found, "{}/{}/{}", d.workspace_id, d.collection, d.id);
    }
    // A second instance on the same table finds the demo workspace and adds nothing.
    crate::spawn(cfg()).unwrap();
    assert_eq!(count(), seeded);
    assert!(!dir.path().join("backend").exists());

    // A table it cannot reach fails the start instead of serving without a store.
    let missing = crate::BackendConfig {
        store: crate::StoreChoice::DynamoDb {
            client: client.clone(),
            table: unique_table(),
            create_table: false,
        },
        ..cfg()
    };
    assert!(matches!(
        crate::spawn(missing),
        Err(crate::BackendError::Store(StoreError::Unavailable(_)))
    ));
}
