//! [`LeaseTable`] over the DynamoDB API (aws-sdk-dynamodb): AWS DynamoDB, or any compatible
//! endpoint (moto, DynamoDB Local, `sluice serve`). Writes use the legacy `Expected` /
//! `AttributeUpdates` form, as the KCL does.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeAction, AttributeDefinition, AttributeValue, AttributeValueUpdate, BillingMode, ExpectedAttributeValue,
    KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
};

use super::super::aws::{aws_chain, env_or_placeholder_credentials};
use super::table::{
    Attr, CHECKPOINT, Item, LEASE_COUNTER, LEASE_KEY, Lease, LeaseTable, TableError, TableFuture, Update, Write,
    lease_from_item, lease_to_item, write_updates,
};

/// Where the lease table lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoConfig {
    /// `"aws"` (the SDK's default chain for region and credentials) or an endpoint URL.
    pub endpoint: String,
    /// The region (with an endpoint URL: default `us-east-1`).
    pub region: Option<String>,
    /// The table: the application name, as in the KCL.
    pub table_name: String,
    /// Static credentials for an endpoint URL; default `AWS_ACCESS_KEY_ID` /
    /// `AWS_SECRET_ACCESS_KEY` from the environment, else placeholder ones.
    pub credentials: Option<(String, String)>,
    /// Per-call timeout.
    pub request_timeout: Duration,
    /// How long [`LeaseTable::ensure_table`] waits for ACTIVE.
    pub create_timeout: Duration,
}

impl DynamoConfig {
    /// Defaults for `table_name` at `endpoint`: 5 s calls, 5 minutes to become ACTIVE.
    pub fn new(endpoint: impl Into<String>, table_name: impl Into<String>) -> DynamoConfig {
        DynamoConfig {
            endpoint: endpoint.into(),
            region: None,
            table_name: table_name.into(),
            credentials: None,
            request_timeout: Duration::from_secs(5),
            create_timeout: Duration::from_secs(300),
        }
    }
}

/// The lease table of one application in DynamoDB.
#[derive(Clone)]
pub struct DynamoLeaseTable {
    client: aws_sdk_dynamodb::Client,
    table: String,
    create_timeout: Duration,
}

impl DynamoLeaseTable {
    /// Builds the SDK client for the configured endpoint (the SDK's own retries are on; a
    /// refused condition is never retried).
    pub async fn connect(config: &DynamoConfig) -> DynamoLeaseTable {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
            .operation_attempt_timeout(config.request_timeout)
            .operation_timeout(config.request_timeout * 3)
            .build();
        let conf = if config.endpoint == "aws" {
            let shared = aws_chain(config.region.clone()).await;
            aws_sdk_dynamodb::config::Builder::from(&shared)
                .retry_config(RetryConfig::standard().with_max_attempts(3))
                .timeout_config(timeouts)
                .build()
        } else {
            let credentials = match &config.credentials {
                Some((id, secret)) => Credentials::new(id, secret, None, None, "sluice-config"),
                None => env_or_placeholder_credentials(),
            };
            aws_sdk_dynamodb::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new(config.region.clone().unwrap_or_else(|| "us-east-1".to_owned())))
                .credentials_provider(credentials)
                .endpoint_url(&config.endpoint)
                .retry_config(RetryConfig::standard().with_max_attempts(3))
                .timeout_config(timeouts)
                .build()
        };
        DynamoLeaseTable::from_client(
            aws_sdk_dynamodb::Client::from_conf(conf),
            &config.table_name,
            config.create_timeout,
        )
    }

    /// Wraps an SDK client the caller built.
    pub fn from_client(client: aws_sdk_dynamodb::Client, table: &str, create_timeout: Duration) -> DynamoLeaseTable {
        DynamoLeaseTable { client, table: table.to_owned(), create_timeout }
    }

    fn call_error<E, R>(&self, op: &'static str, err: SdkError<E, R>) -> TableError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        TableError::Call { op, table: self.table.clone(), message: DisplayErrorContext(&err).to_string() }
    }

    fn key(key: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([(LEASE_KEY.to_owned(), AttributeValue::S(key.to_owned()))])
    }

    async fn status(&self) -> Result<Option<TableStatus>, TableError> {
        match self.client.describe_table().table_name(&self.table).send().await {
            Ok(out) => Ok(out.table().and_then(|t| t.table_status().cloned())),
            Err(e) if code_of(&e) == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(self.call_error("DescribeTable", e)),
        }
    }

    async fn create_table(&self) -> Result<(), TableError> {
        let bad = |message: String| TableError::Table { table: self.table.clone(), message };
        let key = KeySchemaElement::builder()
            .attribute_name(LEASE_KEY)
            .key_type(KeyType::Hash)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let attribute = AttributeDefinition::builder()
            .attribute_name(LEASE_KEY)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .key_schema(key)
            .attribute_definitions(attribute)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => {
                tracing::info!(table = %self.table, "lease table created");
                Ok(())
            }
            // Another worker created it first.
            Err(e) if code_of(&e) == Some("ResourceInUseException") => Ok(()),
            Err(e) => Err(self.call_error("CreateTable", e)),
        }
    }
}

fn code_of<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    match err {
        SdkError::ServiceError(se) => se.err().code(),
        _ => None,
    }
}

/// The SDK's value for one of ours.
pub fn to_sdk(attr: &Attr) -> AttributeValue {
    match attr {
        Attr::S(s) => AttributeValue::S(s.clone()),
        Attr::N(n) => AttributeValue::N(n.clone()),
        Attr::Ss(set) => AttributeValue::Ss(set.iter().cloned().collect()),
        Attr::B(b) => AttributeValue::B(Blob::new(b.clone())),
        Attr::Other(s) => AttributeValue::S(s.clone()),
    }
}

/// Ours for one of the SDK's values (types the schema does not use become [`Attr::Other`]).
pub fn from_sdk(value: &AttributeValue) -> Attr {
    match value {
        AttributeValue::S(s) => Attr::S(s.clone()),
        AttributeValue::N(n) => Attr::N(n.clone()),
        AttributeValue::Ss(set) => Attr::Ss(set.iter().cloned().collect::<BTreeSet<_>>()),
        AttributeValue::B(b) => Attr::B(b.as_ref().to_vec()),
        other => Attr::Other(format!("{other:?}")),
    }
}

fn item_from_sdk(item: &HashMap<String, AttributeValue>) -> Item {
    item.iter().map(|(k, v)| (k.clone(), from_sdk(v))).collect()
}

impl LeaseTable for DynamoLeaseTable {
    fn name(&self) -> &str {
        &self.table
    }

    fn ensure_table(&self) -> TableFuture<'_, ()> {
        Box::pin(async move {
            if self.status().await?.is_none() {
                self.create_table().await?;
            }
            let deadline = tokio::time::Instant::now() + self.create_timeout;
            loop {
                match self.status().await? {
                    Some(TableStatus::Active) => return Ok(()),
                    Some(TableStatus::Deleting) => {
                        return Err(TableError::Table {
                            table: self.table.clone(),
                            message: "table is being deleted".into(),
                        });
                    }
                    _ if tokio::time::Instant::now() >= deadline => {
                        return Err(TableError::Table {
                            table: self.table.clone(),
                            message: format!("not ACTIVE after {:?}", self.create_timeout),
                        });
                    }
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        })
    }

    fn scan(&self) -> TableFuture<'_, Vec<Lease>> {
        Box::pin(async move {
            let mut leases = Vec::new();
            let mut start: Option<HashMap<String, AttributeValue>> = None;
            loop {
                let out = self
                    .client
                    .scan()
                    .table_name(&self.table)
                    .consistent_read(true)
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(|e| self.call_error("Scan", e))?;
                for item in out.items() {
                    match lease_from_item(&item_from_sdk(item)) {
                        Ok(Some(lease)) => leases.push(lease),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(table = %self.table, error = %e, "skipping an item that is not a lease")
                        }
                    }
                }
                match out.last_evaluated_key() {
                    Some(key) if !key.is_empty() => start = Some(key.clone()),
                    _ => return Ok(leases),
                }
            }
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> TableFuture<'a, Option<Lease>> {
        Box::pin(async move {
            let out = self
                .client
                .get_item()
                .table_name(&self.table)
                .set_key(Some(Self::key(key)))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| self.call_error("GetItem", e))?;
            match out.item() {
                Some(item) if !item.is_empty() => Ok(lease_from_item(&item_from_sdk(item))?),
                _ => Ok(None),
            }
        })
    }

    fn create<'a>(&'a self, lease: &'a Lease) -> TableFuture<'a, bool> {
        Box::pin(async move {
            let item: HashMap<String, AttributeValue> =
                lease_to_item(lease).iter().map(|(k, v)| (k.clone(), to_sdk(v))).collect();
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .expected(LEASE_KEY, ExpectedAttributeValue::builder().exists(false).build())
                .send()
                .await;
            match put {
                Ok(_) => Ok(true),
                Err(e) if code_of(&e) == Some("ConditionalCheckFailedException") => Ok(false),
                Err(e) => Err(self.call_error("PutItem", e)),
            }
        })
    }

    fn update<'a>(&'a self, key: &'a str, expected_counter: u64, write: &'a Write) -> TableFuture<'a, bool> {
        Box::pin(async move {
            let mut updates = HashMap::new();
            for (name, update) in write_updates(write, expected_counter) {
                let u = match update {
                    Update::Put(v) => AttributeValueUpdate::builder().action(AttributeAction::Put).value(to_sdk(&v)),
                    Update::Add(v) => AttributeValueUpdate::builder().action(AttributeAction::Add).value(to_sdk(&v)),
                    Update::Delete => AttributeValueUpdate::builder().action(AttributeAction::Delete),
                };
                updates.insert(name.to_owned(), u.build());
            }
            let expected =
                ExpectedAttributeValue::builder().value(AttributeValue::N(expected_counter.to_string())).build();
            let sent = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(Self::key(key)))
                .expected(LEASE_COUNTER, expected)
                .set_attribute_updates(Some(updates))
                .send()
                .await;
            match sent {
                Ok(_) => Ok(true),
                Err(e) if code_of(&e) == Some("ConditionalCheckFailedException") => Ok(false),
                Err(e) => Err(self.call_error("UpdateItem", e)),
            }
        })
    }

    fn delete_finished<'a>(&'a self, key: &'a str) -> TableFuture<'a, bool> {
        Box::pin(async move {
            let expected = ExpectedAttributeValue::builder().value(AttributeValue::S("SHARD_END".to_owned())).build();
            let deleted = self
                .client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(Self::key(key)))
                .expected(CHECKPOINT, expected)
                .send()
                .await;
            match deleted {
                Ok(_) => Ok(true),
                Err(e) if code_of(&e) == Some("ConditionalCheckFailedException") => Ok(false),
                Err(e) => Err(self.call_error("DeleteItem", e)),
            }
        })
    }
}
