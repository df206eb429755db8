//! The distributed L2 tier: one DynamoDB table, one item per key hash.
//!
//! Item: `keyHash` (S, partition key: hex SHA-256 of the credentials, grant and scope),
//! `token` (B, the sealed cached answer), `expiresAt` (N, Unix seconds until which it may be
//! served; checked on every read) and `ttl` (N, Unix seconds, the table's TTL attribute for
//! DynamoDB's background clean-up, which may run days late).
//!
//! Credentials: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) from
//! the environment; with an endpoint override (a local DynamoDB-compatible server) and no
//! credentials, fixed dummy ones.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};

use super::store::{StoreError, StoredToken, TokenStore};

/// Partition key attribute.
pub const KEY_ATTR: &str = "keyHash";
/// Sealed answer attribute.
pub const TOKEN_ATTR: &str = "token";
/// Serve-until attribute (Unix seconds).
pub const EXPIRES_AT_ATTR: &str = "expiresAt";
/// DynamoDB TTL attribute (Unix seconds).
pub const TTL_ATTR: &str = "ttl";

/// Where the table is and how long an operation may take.
#[derive(Debug, Clone)]
pub struct DynamoSettings {
    pub table: String,
    pub region: String,
    /// An endpoint override (`http://127.0.0.1:8000` for a local server); AWS when unset.
    pub endpoint: Option<String>,
    /// Per-operation timeout (retries included). A slow store costs a miss this much at most.
    pub timeout: Duration,
}

/// What `create_table` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableCreation {
    Created,
    AlreadyExisted,
}

/// The DynamoDB token store.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn sdk_error<E: std::error::Error>(op: &'static str, e: E) -> StoreError {
    StoreError::new(op, DisplayErrorContext(e).to_string())
}

/// An SDK client for `settings` (region, endpoint override, timeouts, two attempts per
/// operation; credentials from the environment, or dummy ones for a local endpoint). The
/// backend's DynamoDB store is built on the same client settings.
pub fn client(settings: &DynamoSettings) -> Result<Client, StoreError> {
    let timeouts = TimeoutConfig::builder()
        .operation_timeout(settings.timeout)
        .operation_attempt_timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .build();
    let mut config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .credentials_provider(credentials(settings.endpoint.as_deref())?)
        .timeout_config(timeouts)
        .retry_config(RetryConfig::standard().with_max_attempts(2));
    if let Some(endpoint) = &settings.endpoint {
        config = config.endpoint_url(endpoint);
    }
    Ok(Client::from_conf(config.build()))
}

fn credentials(endpoint: Option<&str>) -> Result<Credentials, StoreError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => Ok(Credentials::new(
            id,
            secret,
            env("AWS_SESSION_TOKEN"),
            None,
            "environment",
        )),
        _ if endpoint.is_some() => Ok(Credentials::new(
            "cedargate-local",
            "cedargate-local",
            None,
            None,
            "local endpoint",
        )),
        _ => Err(StoreError::new(
            "connect",
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
             (and AWS_SESSION_TOKEN for temporary credentials)",
        )),
    }
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

impl DynamoStore {
    /// A client for `settings` (no network traffic yet).
    pub fn connect(settings: &DynamoSettings) -> Result<DynamoStore, StoreError> {
        Ok(DynamoStore {
            client: client(settings)?,
            table: settings.table.clone(),
        })
    }

    /// The SDK client (tests scan the table with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Create the table (on-demand capacity) unless it exists, wait until it is active and
    /// turn on its TTL clean-up on `ttl`. Safe to run again.
    pub async fn create_table(&self) -> Result<TableCreation, StoreError> {
        let build =
            |e: aws_sdk_dynamodb::error::BuildError| StoreError::new("create", e.to_string());
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(KEY_ATTR)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(build)?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(KEY_ATTR)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(build)?,
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        let outcome = match created {
            Ok(_) => TableCreation::Created,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception()) =>
            {
                TableCreation::AlreadyExisted
            }
            Err(e) => return Err(sdk_error("create", e)),
        };
        self.wait_active().await?;
        self.enable_ttl().await?;
        Ok(outcome)
    }

    async fn wait_active(&self) -> Result<(), StoreError> {
        for _ in 0..120 {
            let described = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| sdk_error("describe", e))?;
            if described.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(StoreError::new(
            "create",
            format!("table {} did not become active within a minute", self.table),
        ))
    }

    async fn enable_ttl(&self) -> Result<(), StoreError> {
        let ttl = self
            .client
            .describe_time_to_live()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| sdk_error("describe ttl", e))?;
        let description = ttl.time_to_live_description();
        let status = description.and_then(|d| d.time_to_live_status());
        if matches!(
            status,
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
        ) {
            if description.and_then(|d| d.attribute_name()) == Some(TTL_ATTR) {
                return Ok(());
            }
            return Err(StoreError::new(
                "enable ttl",
                format!(
                    "table {} has TTL on another attribute; cedargate needs `{TTL_ATTR}`",
                    self.table
                ),
            ));
        }
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(TTL_ATTR)
                    .build()
                    .map_err(|e| StoreError::new("enable ttl", e.to_string()))?,
            )
            .send()
            .await
            .map_err(|e| sdk_error("enable ttl", e))?;
        Ok(())
    }

    /// The TTL attribute the table cleans up on, if TTL is on.
    pub async fn ttl_attribute(&self) -> Result<Option<String>, StoreError> {
        let ttl = self
            .client
            .describe_time_to_live()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| sdk_error("describe ttl", e))?;
        Ok(ttl
            .time_to_live_description()
            .filter(|d| d.time_to_live_status() == Some(&TimeToLiveStatus::Enabled))
            .and_then(|d| d.attribute_name())
            .map(str::to_string))
    }

    /// Every item of the table, raw (for tests and audits; a full scan).
    pub async fn scan_all(&self) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_error("scan", e))?;
            items.extend(page.items().iter().cloned());
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(items),
            }
        }
    }
}

#[async_trait]
impl TokenStore for DynamoStore {
    async fn get(&self, key: &str) -> Result<Option<StoredToken>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY_ATTR, AttributeValue::S(key.to_string()))
            .send()
            .await
            .map_err(|e| sdk_error("get", e))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        let blob = match item.get(TOKEN_ATTR).map(AttributeValue::as_b) {
            Some(Ok(b)) => b.as_ref().to_vec(),
            _ => return Err(StoreError::new("get", "an item without a binary `token`")),
        };
        let (Some(expires_at), ttl) = (number(item, EXPIRES_AT_ATTR), number(item, TTL_ATTR))
        else {
            return Err(StoreError::new(
                "get",
                "an item without a numeric `expiresAt`",
            ));
        };
        Ok(Some(StoredToken {
            key: key.to_string(),
            blob,
            expires_at,
            ttl: ttl.unwrap_or(expires_at),
        }))
    }

    async fn put(&self, item: StoredToken) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item(KEY_ATTR, AttributeValue::S(item.key))
            .item(TOKEN_ATTR, AttributeValue::B(Blob::new(item.blob)))
            .item(
                EXPIRES_AT_ATTR,
                AttributeValue::N(item.expires_at.to_string()),
            )
            .item(TTL_ATTR, AttributeValue::N(item.ttl.to_string()))
            .send()
            .await
            .map_err(|e| sdk_error("put", e))?;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "dynamodb"
    }
}
