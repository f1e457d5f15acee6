//! An in-memory [`LeaseTable`] for tests: items are stored as KCL attribute maps and written
//! through the same serializer as DynamoDB, so the conditions and updates behave alike.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::table::{
    Attr, CHECKPOINT, Item, LEASE_COUNTER, LEASE_KEY, Lease, LeaseTable, TableError, TableFuture, Update, Write,
    lease_from_item, lease_to_item, write_updates,
};

/// A lease table in memory. Clones share the table.
#[derive(Clone, Default)]
pub struct MemoryLeaseTable {
    items: Arc<Mutex<BTreeMap<String, Item>>>,
    failing: Arc<AtomicBool>,
}

impl MemoryLeaseTable {
    /// An empty table.
    pub fn new() -> MemoryLeaseTable {
        MemoryLeaseTable::default()
    }

    /// The raw item of `key` (to check attribute names and types).
    pub fn item(&self, key: &str) -> Option<Item> {
        self.lock().get(key).cloned()
    }

    /// Replaces or inserts a raw item (to simulate another application's writes).
    pub fn put_item(&self, item: Item) {
        if let Some(Attr::S(key)) = item.get(LEASE_KEY) {
            let key = key.clone();
            self.lock().insert(key, item);
        }
    }

    /// While set, every call fails with [`TableError::Call`] (an outage).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Item>> {
        self.items.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check(&self, op: &'static str) -> Result<(), TableError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(TableError::Call { op, table: "memory".into(), message: "simulated outage".into() });
        }
        Ok(())
    }
}

fn counter_of(item: &Item) -> Option<u64> {
    match item.get(LEASE_COUNTER) {
        Some(Attr::N(n)) => n.parse().ok(),
        _ => None,
    }
}

fn apply(item: &mut Item, name: &str, update: Update) {
    match update {
        Update::Put(value) => {
            item.insert(name.to_owned(), value);
        }
        Update::Delete => {
            item.remove(name);
        }
        Update::Add(Attr::N(delta)) => {
            let old = match item.get(name) {
                Some(Attr::N(n)) => n.parse::<i128>().unwrap_or(0),
                _ => 0,
            };
            let sum = old + delta.parse::<i128>().unwrap_or(0);
            item.insert(name.to_owned(), Attr::N(sum.to_string()));
        }
        Update::Add(other) => {
            item.insert(name.to_owned(), other);
        }
    }
}

impl LeaseTable for MemoryLeaseTable {
    fn name(&self) -> &str {
        "memory"
    }

    fn ensure_table(&self) -> TableFuture<'_, ()> {
        Box::pin(async move { self.check("CreateTable") })
    }

    fn scan(&self) -> TableFuture<'_, Vec<Lease>> {
        Box::pin(async move {
            self.check("Scan")?;
            let items: Vec<Item> = self.lock().values().cloned().collect();
            let mut leases = Vec::with_capacity(items.len());
            for item in &items {
                if let Some(lease) = lease_from_item(item)? {
                    leases.push(lease);
                }
            }
            Ok(leases)
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> TableFuture<'a, Option<Lease>> {
        Box::pin(async move {
            self.check("GetItem")?;
            let item = self.lock().get(key).cloned();
            match item {
                Some(item) => Ok(lease_from_item(&item)?),
                None => Ok(None),
            }
        })
    }

    fn create<'a>(&'a self, lease: &'a Lease) -> TableFuture<'a, bool> {
        Box::pin(async move {
            self.check("PutItem")?;
            let mut items = self.lock();
            if items.contains_key(&lease.key) {
                return Ok(false);
            }
            items.insert(lease.key.clone(), lease_to_item(lease));
            Ok(true)
        })
    }

    fn update<'a>(&'a self, key: &'a str, expected_counter: u64, write: &'a Write) -> TableFuture<'a, bool> {
        Box::pin(async move {
            self.check("UpdateItem")?;
            let mut items = self.lock();
            let Some(item) = items.get_mut(key) else { return Ok(false) };
            if counter_of(item) != Some(expected_counter) {
                return Ok(false);
            }
            for (name, update) in write_updates(write, expected_counter) {
                apply(item, name, update);
            }
            Ok(true)
        })
    }

    fn delete_finished<'a>(&'a self, key: &'a str) -> TableFuture<'a, bool> {
        Box::pin(async move {
            self.check("DeleteItem")?;
            let mut items = self.lock();
            let finished =
                matches!(items.get(key).and_then(|i| i.get(CHECKPOINT)), Some(Attr::S(c)) if c == "SHARD_END");
            if finished {
                items.remove(key);
            }
            Ok(finished)
        })
    }
}
