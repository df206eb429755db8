//! Sending requests: classifying the SDK's errors, retrying transaction conflicts.

use std::time::Duration;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;

use crate::store::StoreError;

/// How often a write is sent again after a transaction conflict or a purged expired item.
pub const ATTEMPTS: u32 = 8;

/// Why a request did not succeed.
pub enum Failure {
    /// Its condition did not hold.
    Condition,
    /// It raced a transaction on the same item.
    Conflict,
    /// Anything else.
    Store(StoreError),
}

pub fn unavailable<E: std::error::Error>(op: &str, e: E) -> StoreError {
    // The SDK's errors carry the service's message and request id, never credentials.
    StoreError::Unavailable(format!("dynamodb {op}: {}", DisplayErrorContext(e)))
}

pub fn classify<E, R>(op: &str, e: SdkError<E, R>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.code() {
        Some("ConditionalCheckFailedException") => Failure::Condition,
        Some("TransactionConflictException") => Failure::Conflict,
        Some("ValidationException") => Failure::Store(StoreError::Invalid(format!(
            "dynamodb {op}: {}",
            e.message().unwrap_or("request refused")
        ))),
        Some(
            "ProvisionedThroughputExceededException"
            | "ThrottlingException"
            | "RequestLimitExceeded",
        ) => Failure::Store(StoreError::Busy(format!(
            "dynamodb {op}: {}",
            e.code().unwrap_or("throttled")
        ))),
        _ => Failure::Store(unavailable(op, e)),
    }
}

pub fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Invalid(format!("dynamodb request: {e}"))
}

/// Sleep before attempt `n + 1`: exponential from 10 ms, with jitter so racers spread out.
pub async fn backoff(n: u32) {
    let base = 10u64 << n.min(6);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(base / 2 + nanos % base)).await;
}

/// Send a request, again after a transaction conflict.
pub async fn send<T, E, R, F, Fut>(op: &str, mut request: F) -> Result<T, Failure>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, R>>>,
{
    let mut n = 0;
    loop {
        match request().await.map_err(|e| classify(op, e)) {
            Err(Failure::Conflict) if n + 1 < ATTEMPTS => backoff(n).await,
            Err(Failure::Conflict) => {
                return Err(Failure::Store(StoreError::Busy(format!(
                    "dynamodb {op}: transaction conflicts persisted"
                ))));
            }
            other => return other,
        }
        n += 1;
    }
}

/// The failure as a store error, for calls where a failed condition is not expected.
pub fn plain<T>(r: Result<T, Failure>) -> Result<T, StoreError> {
    r.map_err(|f| match f {
        Failure::Store(e) => e,
        Failure::Condition => StoreError::Unavailable("dynamodb: unexpected condition".into()),
        Failure::Conflict => StoreError::Unavailable("dynamodb: transaction conflict".into()),
    })
}

/// Why a TransactWriteItems was cancelled: one code per write (`None` for the innocent ones).
pub fn cancellation_codes(
    e: &SdkError<TransactWriteItemsError, impl std::fmt::Debug>,
) -> Vec<String> {
    let Some(TransactWriteItemsError::TransactionCanceledException(c)) = e.as_service_error()
    else {
        return Vec::new();
    };
    let codes: Vec<String> = c
        .cancellation_reasons()
        .iter()
        .map(|r| r.code().unwrap_or("None").to_owned())
        .collect();
    if !codes.is_empty() {
        return codes;
    }
    // Without structured reasons, the message lists them: "... reasons [A, None]".
    c.message()
        .and_then(|m| m.rsplit_once('[')?.1.strip_suffix(']').map(str::to_owned))
        .map(|list| list.split(", ").map(str::to_owned).collect())
        .unwrap_or_default()
}
