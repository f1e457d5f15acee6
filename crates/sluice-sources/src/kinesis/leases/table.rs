//! The lease table: the [`LeaseTable`] trait the coordinator writes through, and the KCL 2.x
//! item schema ([`lease_to_item`], [`lease_from_item`], [`write_updates`]) shared by every
//! implementation, so that sluice and KCL applications can share and inspect one table.
//!
//! | attribute | type | meaning |
//! |---|---|---|
//! | `leaseKey` | S | the shard id (the table's hash key) |
//! | `leaseOwner` | S | the worker holding the lease; absent when nobody does |
//! | `leaseCounter` | N | fencing token: every renew, take, checkpoint and release writes `N+1` on the condition `leaseCounter == N` |
//! | `checkpoint` | S | a sequence number or `TRIM_HORIZON` / `LATEST` / `SHARD_END` / `AT_TIMESTAMP` |
//! | `checkpointSubSequenceNumber` | N | the user record inside a KPL aggregate |
//! | `ownerSwitchesSinceCheckpoint` | N | takes by another worker since the last checkpoint |
//! | `parentShardId` | SS | the parent shards (a set despite the name), omitted when none |
//! | `childShardIds` | SS | written with a `SHARD_END` checkpoint when known |
//! | `startingHashKey`, `endingHashKey` | S | the shard's hash key range, decimal |
//! | `checkpointOwner` | S | KCL 3's graceful handoff: the previous owner, set by a steal until it wrote its last checkpoint |
//!
//! Writes use DynamoDB's legacy `Expected` / `AttributeUpdates` form, as the KCL does; items of
//! other entity types (KCL 3.5's `entityType` other than `LEASE`) are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use sluice_core::HashKeyRange;
use sluice_core::hash::parse_hash_key;

/// `leaseKey` (S): the shard id, the table's hash key.
pub const LEASE_KEY: &str = "leaseKey";
/// `leaseOwner` (S).
pub const LEASE_OWNER: &str = "leaseOwner";
/// `leaseCounter` (N).
pub const LEASE_COUNTER: &str = "leaseCounter";
/// `checkpoint` (S).
pub const CHECKPOINT: &str = "checkpoint";
/// `checkpointSubSequenceNumber` (N).
pub const CHECKPOINT_SUB: &str = "checkpointSubSequenceNumber";
/// `ownerSwitchesSinceCheckpoint` (N).
pub const OWNER_SWITCHES: &str = "ownerSwitchesSinceCheckpoint";
/// `parentShardId` (SS).
pub const PARENT_SHARD_ID: &str = "parentShardId";
/// `childShardIds` (SS).
pub const CHILD_SHARD_IDS: &str = "childShardIds";
/// `startingHashKey` (S).
pub const STARTING_HASH_KEY: &str = "startingHashKey";
/// `endingHashKey` (S).
pub const ENDING_HASH_KEY: &str = "endingHashKey";
/// `pendingCheckpoint` (S): written by KCL 2.x's two-phase checkpoints; read, cleared by a checkpoint.
pub const PENDING_CHECKPOINT: &str = "pendingCheckpoint";
/// `pendingCheckpointSubSequenceNumber` (N).
pub const PENDING_CHECKPOINT_SUB: &str = "pendingCheckpointSubSequenceNumber";
/// `pendingCheckpointState` (B).
pub const PENDING_CHECKPOINT_STATE: &str = "pendingCheckpointState";
/// `checkpointOwner` (S): KCL 3's graceful handoff marker: set by a steal to the previous
/// owner, cleared by its handoff checkpoint or by a take.
pub const CHECKPOINT_OWNER: &str = "checkpointOwner";
/// `entityType` (S): KCL 3.5 keeps other entities in the lease table; absent or `LEASE` is a lease.
pub const ENTITY_TYPE: &str = "entityType";

/// One attribute value, in the DynamoDB types the schema uses (numbers as decimal strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attr {
    /// `S`.
    S(String),
    /// `N`, as DynamoDB sends it.
    N(String),
    /// `SS`.
    Ss(BTreeSet<String>),
    /// `B`.
    B(Vec<u8>),
    /// Any other type (kept so that items round-trip through [`crate::kinesis::leases::MemoryLeaseTable`]).
    Other(String),
}

/// An item: attribute name to value.
pub type Item = BTreeMap<String, Attr>;

/// One legacy `AttributeUpdates` action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// `PUT` the value.
    Put(Attr),
    /// `ADD` the number.
    Add(Attr),
    /// `DELETE` the attribute.
    Delete,
}

/// A lease's checkpoint: a sentinel or a sequence number with its sub-sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Checkpoint {
    /// `TRIM_HORIZON`: read the shard from its oldest record.
    TrimHorizon,
    /// `LATEST`: read only records written after the reader starts.
    Latest,
    /// `AT_TIMESTAMP`: read from the configured timestamp (the table does not store it, as in
    /// the KCL; the reader takes it from its own configuration).
    AtTimestamp,
    /// `SHARD_END`: the shard is closed and every record was processed.
    ShardEnd,
    /// Every record up to and including this one was processed. Restart AT_SEQUENCE_NUMBER
    /// `sequence` and drop records with `(seq, sub) <= (sequence, sub)`.
    Sequence {
        /// The sequence number (decimal digits).
        sequence: String,
        /// The user record inside a KPL aggregate (0 when not aggregated).
        sub: u64,
    },
}

impl Checkpoint {
    /// The `checkpoint` attribute's text.
    pub fn as_str(&self) -> &str {
        match self {
            Checkpoint::TrimHorizon => "TRIM_HORIZON",
            Checkpoint::Latest => "LATEST",
            Checkpoint::AtTimestamp => "AT_TIMESTAMP",
            Checkpoint::ShardEnd => "SHARD_END",
            Checkpoint::Sequence { sequence, .. } => sequence,
        }
    }

    /// The `checkpointSubSequenceNumber` attribute (0 for sentinels).
    pub fn sub(&self) -> u64 {
        match self {
            Checkpoint::Sequence { sub, .. } => *sub,
            _ => 0,
        }
    }

    /// A sentinel (anything but a sequence number)?
    pub fn is_sentinel(&self) -> bool {
        !matches!(self, Checkpoint::Sequence { .. })
    }

    /// Reads the two attributes; any text that is not a sentinel is a sequence number.
    pub fn parse(text: &str, sub: u64) -> Checkpoint {
        match text {
            "TRIM_HORIZON" => Checkpoint::TrimHorizon,
            "LATEST" => Checkpoint::Latest,
            "AT_TIMESTAMP" => Checkpoint::AtTimestamp,
            "SHARD_END" => Checkpoint::ShardEnd,
            other => Checkpoint::Sequence { sequence: other.to_owned(), sub },
        }
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checkpoint::Sequence { sequence, sub } => write!(f, "{sequence}/{sub}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// One lease item, as read from the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// `leaseKey`: the shard id.
    pub key: String,
    /// `leaseOwner`: the worker holding it, if any.
    pub owner: Option<String>,
    /// `leaseCounter`.
    pub counter: u64,
    /// `checkpoint` + `checkpointSubSequenceNumber`.
    pub checkpoint: Checkpoint,
    /// `ownerSwitchesSinceCheckpoint`.
    pub owner_switches: u64,
    /// `parentShardId`.
    pub parents: BTreeSet<String>,
    /// `childShardIds`.
    pub children: BTreeSet<String>,
    /// `startingHashKey` / `endingHashKey`.
    pub hash_range: Option<HashKeyRange>,
    /// `pendingCheckpoint` (written by KCL 2.x applications only).
    pub pending_checkpoint: Option<Checkpoint>,
    /// `checkpointOwner`: while set, a steal waits for this previous owner's last checkpoint.
    pub checkpoint_owner: Option<String>,
}

impl Lease {
    /// A new, unowned lease with counter 0 (what shard sync creates).
    pub fn new(key: impl Into<String>, checkpoint: Checkpoint) -> Lease {
        Lease {
            key: key.into(),
            owner: None,
            counter: 0,
            checkpoint,
            owner_switches: 0,
            parents: BTreeSet::new(),
            children: BTreeSet::new(),
            hash_range: None,
            pending_checkpoint: None,
            checkpoint_owner: None,
        }
    }
}

/// A conditional write the coordinator makes. Each one also PUTs `leaseCounter = N+1` and is
/// conditioned on `leaseCounter == N` (see [`LeaseTable::update`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A heartbeat: only the counter.
    Renew,
    /// PUT `leaseOwner`; ADD 1 to `ownerSwitchesSinceCheckpoint` when the owner changes;
    /// DELETE `checkpointOwner`.
    Take {
        /// The new owner.
        owner: String,
        /// The previous owner was someone else (not nobody, not this owner).
        owner_switched: bool,
    },
    /// PUT `checkpoint`, `checkpointSubSequenceNumber`, `ownerSwitchesSinceCheckpoint = 0`;
    /// DELETE the pending-checkpoint fields; PUT `childShardIds` and the hash keys when known.
    Checkpoint {
        /// The new checkpoint.
        checkpoint: Checkpoint,
        /// Child shards, written when not empty (with `SHARD_END`).
        children: BTreeSet<String>,
        /// The shard's hash key range, when known.
        hash_range: Option<HashKeyRange>,
    },
    /// DELETE `leaseOwner` (a graceful release: the next scan sees the lease unowned).
    Release,
    /// A steal with a graceful handoff: PUT `leaseOwner`, PUT `checkpointOwner` = the previous
    /// owner (who writes its last checkpoint with [`Write::HandOff`] before the new owner
    /// reads), ADD 1 to `ownerSwitchesSinceCheckpoint`.
    Steal {
        /// The new owner.
        owner: String,
        /// The owner it is taken from.
        from: String,
    },
    /// The previous owner's side of a handoff: its last checkpoint, if it has a newer one
    /// (written as [`Write::Checkpoint`] writes it), and DELETE `checkpointOwner`.
    HandOff {
        /// The last checkpoint.
        checkpoint: Option<Checkpoint>,
    },
}

/// The item the KCL's serializer writes for a lease.
pub fn lease_to_item(lease: &Lease) -> Item {
    let mut item = Item::new();
    item.insert(LEASE_KEY.into(), Attr::S(lease.key.clone()));
    item.insert(LEASE_COUNTER.into(), Attr::N(lease.counter.to_string()));
    if let Some(owner) = &lease.owner {
        item.insert(LEASE_OWNER.into(), Attr::S(owner.clone()));
    }
    item.insert(OWNER_SWITCHES.into(), Attr::N(lease.owner_switches.to_string()));
    item.insert(CHECKPOINT.into(), Attr::S(lease.checkpoint.as_str().to_owned()));
    item.insert(CHECKPOINT_SUB.into(), Attr::N(lease.checkpoint.sub().to_string()));
    if !lease.parents.is_empty() {
        item.insert(PARENT_SHARD_ID.into(), Attr::Ss(lease.parents.clone()));
    }
    if !lease.children.is_empty() {
        item.insert(CHILD_SHARD_IDS.into(), Attr::Ss(lease.children.clone()));
    }
    if let Some(pending) = &lease.pending_checkpoint {
        item.insert(PENDING_CHECKPOINT.into(), Attr::S(pending.as_str().to_owned()));
        item.insert(PENDING_CHECKPOINT_SUB.into(), Attr::N(pending.sub().to_string()));
    }
    if let Some(range) = &lease.hash_range {
        item.insert(STARTING_HASH_KEY.into(), Attr::S(range.start.to_string()));
        item.insert(ENDING_HASH_KEY.into(), Attr::S(range.end.to_string()));
    }
    if let Some(owner) = &lease.checkpoint_owner {
        item.insert(CHECKPOINT_OWNER.into(), Attr::S(owner.clone()));
    }
    item
}

/// Why an item is not a lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lease item {key:?}: {message}")]
pub struct SchemaError {
    /// The item's `leaseKey`, when it has one.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Reads a lease item; `Ok(None)` for items of another KCL entity type.
pub fn lease_from_item(item: &Item) -> Result<Option<Lease>, SchemaError> {
    if let Some(Attr::S(kind)) = item.get(ENTITY_TYPE)
        && kind != "LEASE"
    {
        return Ok(None);
    }
    let key = match item.get(LEASE_KEY) {
        Some(Attr::S(k)) => k.clone(),
        _ => return Err(SchemaError { key: String::new(), message: format!("no {LEASE_KEY} string") }),
    };
    let bad = |message: String| SchemaError { key: key.clone(), message };
    let string = |name: &str| -> Result<Option<String>, SchemaError> {
        match item.get(name) {
            None => Ok(None),
            Some(Attr::S(s)) => Ok(Some(s.clone())),
            Some(other) => Err(bad(format!("{name} is {other:?}, not a string"))),
        }
    };
    let number = |name: &str| -> Result<Option<u64>, SchemaError> {
        match item.get(name) {
            None => Ok(None),
            Some(Attr::N(n)) => {
                n.trim().parse::<u64>().map(Some).map_err(|_| bad(format!("{name} = {n:?} is not a whole number")))
            }
            Some(other) => Err(bad(format!("{name} is {other:?}, not a number"))),
        }
    };
    let set = |name: &str| -> Result<BTreeSet<String>, SchemaError> {
        match item.get(name) {
            None => Ok(BTreeSet::new()),
            Some(Attr::Ss(s)) => Ok(s.clone()),
            // Tolerate a single string (hand-written items).
            Some(Attr::S(s)) => Ok(BTreeSet::from([s.clone()])),
            Some(other) => Err(bad(format!("{name} is {other:?}, not a string set"))),
        }
    };
    let counter = number(LEASE_COUNTER)?.ok_or_else(|| bad(format!("no {LEASE_COUNTER}")))?;
    let checkpoint = match string(CHECKPOINT)? {
        Some(text) => Checkpoint::parse(&text, number(CHECKPOINT_SUB)?.unwrap_or(0)),
        None => return Err(bad(format!("no {CHECKPOINT}"))),
    };
    let pending_checkpoint = match string(PENDING_CHECKPOINT)? {
        Some(text) if !text.is_empty() => Some(Checkpoint::parse(&text, number(PENDING_CHECKPOINT_SUB)?.unwrap_or(0))),
        _ => None,
    };
    let hash_range = match (string(STARTING_HASH_KEY)?, string(ENDING_HASH_KEY)?) {
        (Some(s), Some(e)) => match (parse_hash_key(&s), parse_hash_key(&e)) {
            (Ok(start), Ok(end)) => Some(HashKeyRange { start, end }),
            _ => return Err(bad(format!("bad hash key range {s:?}..{e:?}"))),
        },
        _ => None,
    };
    Ok(Some(Lease {
        owner: string(LEASE_OWNER)?.filter(|o| !o.is_empty()),
        counter,
        checkpoint,
        owner_switches: number(OWNER_SWITCHES)?.unwrap_or(0),
        parents: set(PARENT_SHARD_ID)?,
        children: set(CHILD_SHARD_IDS)?,
        hash_range,
        pending_checkpoint,
        checkpoint_owner: string(CHECKPOINT_OWNER)?.filter(|o| !o.is_empty()),
        key,
    }))
}

/// The `AttributeUpdates` of a write made on the condition `leaseCounter == expected_counter`.
pub fn write_updates(write: &Write, expected_counter: u64) -> Vec<(&'static str, Update)> {
    let mut updates = vec![(LEASE_COUNTER, Update::Put(Attr::N((expected_counter + 1).to_string())))];
    match write {
        Write::Renew => {}
        Write::Take { owner, owner_switched } => {
            updates.push((LEASE_OWNER, Update::Put(Attr::S(owner.clone()))));
            updates.push((CHECKPOINT_OWNER, Update::Delete));
            if *owner_switched {
                updates.push((OWNER_SWITCHES, Update::Add(Attr::N("1".into()))));
            }
        }
        Write::Checkpoint { checkpoint, children, hash_range } => {
            checkpoint_updates(checkpoint, &mut updates);
            if !children.is_empty() {
                updates.push((CHILD_SHARD_IDS, Update::Put(Attr::Ss(children.clone()))));
            }
            if let Some(range) = hash_range {
                updates.push((STARTING_HASH_KEY, Update::Put(Attr::S(range.start.to_string()))));
                updates.push((ENDING_HASH_KEY, Update::Put(Attr::S(range.end.to_string()))));
            }
        }
        Write::Release => updates.push((LEASE_OWNER, Update::Delete)),
        Write::Steal { owner, from } => {
            updates.push((LEASE_OWNER, Update::Put(Attr::S(owner.clone()))));
            updates.push((CHECKPOINT_OWNER, Update::Put(Attr::S(from.clone()))));
            updates.push((OWNER_SWITCHES, Update::Add(Attr::N("1".into()))));
        }
        Write::HandOff { checkpoint } => {
            if let Some(checkpoint) = checkpoint {
                checkpoint_updates(checkpoint, &mut updates);
            }
            updates.push((CHECKPOINT_OWNER, Update::Delete));
        }
    }
    updates
}

fn checkpoint_updates(checkpoint: &Checkpoint, updates: &mut Vec<(&'static str, Update)>) {
    updates.push((CHECKPOINT, Update::Put(Attr::S(checkpoint.as_str().to_owned()))));
    updates.push((CHECKPOINT_SUB, Update::Put(Attr::N(checkpoint.sub().to_string()))));
    updates.push((OWNER_SWITCHES, Update::Put(Attr::N("0".into()))));
    updates.push((PENDING_CHECKPOINT, Update::Delete));
    updates.push((PENDING_CHECKPOINT_SUB, Update::Delete));
    updates.push((PENDING_CHECKPOINT_STATE, Update::Delete));
}

/// Why a table call failed (a condition that does not hold is not an error: the calls answer
/// `false`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The call failed or timed out; worth retrying later.
    #[error("{op} on lease table {table}: {message}")]
    Call {
        /// The operation (`Scan`, `UpdateItem`, ...).
        op: &'static str,
        /// The table.
        table: String,
        /// What the service or the connection said.
        message: String,
    },
    /// The table did not become ACTIVE in time, or cannot be created.
    #[error("lease table {table}: {message}")]
    Table {
        /// The table.
        table: String,
        /// What is wrong.
        message: String,
    },
    /// An item is not a lease.
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// A boxed future of a table call.
pub type TableFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, TableError>> + Send + 'a>>;

/// The lease table of one application. Every write is conditional; a condition that does not
/// hold answers `Ok(false)`.
pub trait LeaseTable: Send + Sync {
    /// The table's name.
    fn name(&self) -> &str;

    /// Creates the table if it is missing (hash key `leaseKey` S, PAY_PER_REQUEST) and waits
    /// until it is ACTIVE.
    fn ensure_table(&self) -> TableFuture<'_, ()>;

    /// Every lease (a consistent scan, all pages); items of other entity types are skipped.
    fn scan(&self) -> TableFuture<'_, Vec<Lease>>;

    /// One lease (a consistent read).
    fn get<'a>(&'a self, key: &'a str) -> TableFuture<'a, Option<Lease>>;

    /// PutItem on the condition that `leaseKey` does not exist; false when it does.
    fn create<'a>(&'a self, lease: &'a Lease) -> TableFuture<'a, bool>;

    /// UpdateItem: `Expected leaseCounter == expected_counter`, `AttributeUpdates` from
    /// [`write_updates`]; false when the condition fails (or the item is gone).
    fn update<'a>(&'a self, key: &'a str, expected_counter: u64, write: &'a Write) -> TableFuture<'a, bool>;

    /// DeleteItem on the condition `checkpoint == SHARD_END`; false when it is not (or gone).
    fn delete_finished<'a>(&'a self, key: &'a str) -> TableFuture<'a, bool>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_lease() -> Lease {
        Lease {
            key: "shardId-000000000002".into(),
            owner: Some("w1".into()),
            counter: 7,
            checkpoint: Checkpoint::Sequence {
                sequence: "49590338271490256608559692538361571095921575989136588898".into(),
                sub: 3,
            },
            owner_switches: 2,
            parents: BTreeSet::from(["shardId-000000000000".into(), "shardId-000000000001".into()]),
            children: BTreeSet::new(),
            hash_range: Some(HashKeyRange { start: 0, end: u128::MAX }),
            pending_checkpoint: None,
            checkpoint_owner: None,
        }
    }

    #[test]
    fn item_round_trips_with_kcl_names_and_types() {
        let lease = full_lease();
        let item = lease_to_item(&lease);
        let names: Vec<&str> = item.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "checkpoint",
                "checkpointSubSequenceNumber",
                "endingHashKey",
                "leaseCounter",
                "leaseKey",
                "leaseOwner",
                "ownerSwitchesSinceCheckpoint",
                "parentShardId",
                "startingHashKey"
            ]
        );
        assert_eq!(item["leaseCounter"], Attr::N("7".into()));
        assert_eq!(item["checkpointSubSequenceNumber"], Attr::N("3".into()));
        assert!(matches!(item["parentShardId"], Attr::Ss(_)));
        assert_eq!(item["endingHashKey"], Attr::S(u128::MAX.to_string()));
        assert_eq!(lease_from_item(&item), Ok(Some(lease)));
    }

    #[test]
    fn sentinels_parse_and_other_entities_are_skipped() {
        for (text, cp) in [
            ("TRIM_HORIZON", Checkpoint::TrimHorizon),
            ("LATEST", Checkpoint::Latest),
            ("AT_TIMESTAMP", Checkpoint::AtTimestamp),
            ("SHARD_END", Checkpoint::ShardEnd),
        ] {
            assert_eq!(Checkpoint::parse(text, 0), cp);
            assert_eq!(cp.as_str(), text);
            assert!(cp.is_sentinel());
        }
        let mut item = lease_to_item(&full_lease());
        item.insert(ENTITY_TYPE.into(), Attr::S("WORKER_METRICS".into()));
        assert_eq!(lease_from_item(&item), Ok(None));
        item.insert(ENTITY_TYPE.into(), Attr::S("LEASE".into()));
        assert!(lease_from_item(&item).is_ok_and(|l| l.is_some()));
        item.insert(LEASE_COUNTER.into(), Attr::S("x".into()));
        assert!(lease_from_item(&item).is_err());
    }

    #[test]
    fn updates_put_the_next_counter() {
        let up = write_updates(&Write::Renew, 41);
        assert_eq!(up, vec![(LEASE_COUNTER, Update::Put(Attr::N("42".into())))]);
        let up = write_updates(&Write::Take { owner: "w2".into(), owner_switched: true }, 1);
        assert!(up.contains(&(OWNER_SWITCHES, Update::Add(Attr::N("1".into())))));
        assert!(up.contains(&(LEASE_OWNER, Update::Put(Attr::S("w2".into())))));
        let up = write_updates(&Write::Release, 5);
        assert!(up.contains(&(LEASE_OWNER, Update::Delete)));
        let cp = Write::Checkpoint {
            checkpoint: Checkpoint::ShardEnd,
            children: BTreeSet::from(["c".into()]),
            hash_range: None,
        };
        let up = write_updates(&cp, 5);
        assert!(up.contains(&(OWNER_SWITCHES, Update::Put(Attr::N("0".into())))));
        assert!(up.contains(&(CHILD_SHARD_IDS, Update::Put(Attr::Ss(BTreeSet::from(["c".into()]))))));
    }
}
