//! The producer's view of the stream's shards, learnt from ListShards: which open shard a hash
//! key will land on (for rate limiting and KPL aggregation), and the ranges of all shards
//! (to check where an aggregate actually landed).

use std::collections::HashMap;
use std::sync::Arc;

use sluice_core::HashKeyRange;

/// One shard as ListShards describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// `shardId-000000000000`.
    pub id: Arc<str>,
    /// Its hash keys.
    pub range: HashKeyRange,
    /// Whether it still takes writes (no ending sequence number).
    pub open: bool,
}

/// Open shards sorted by range, plus every shard's range by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardMap {
    open: Vec<ShardInfo>,
    ranges: HashMap<Arc<str>, HashKeyRange>,
}

impl ShardMap {
    /// Builds the map from ListShards' shards.
    pub fn new(shards: Vec<ShardInfo>) -> ShardMap {
        let ranges = shards.iter().map(|s| (s.id.clone(), s.range)).collect();
        let mut open: Vec<ShardInfo> = shards.into_iter().filter(|s| s.open).collect();
        open.sort_by_key(|s| s.range.start);
        ShardMap { open, ranges }
    }

    /// The open shards, by ascending range.
    pub fn open_shards(&self) -> &[ShardInfo] {
        &self.open
    }

    /// Index (into [`ShardMap::open_shards`]) of the open shard covering `hash`.
    pub fn predict(&self, hash: u128) -> Option<usize> {
        let i = self.open.partition_point(|s| s.range.start <= hash);
        let i = i.checked_sub(1)?;
        self.open[i].range.contains(hash).then_some(i)
    }

    /// The range of any listed shard, open or closed.
    pub fn range_of(&self, shard_id: &str) -> Option<HashKeyRange> {
        self.ranges.get(shard_id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(i: u32, start: u128, end: u128, open: bool) -> ShardInfo {
        ShardInfo { id: format!("shardId-{i:012}").into(), range: HashKeyRange { start, end }, open }
    }

    #[test]
    fn predicts_open_shards_only() {
        let half = 1u128 << 127;
        let map = ShardMap::new(vec![
            shard(0, 0, u128::MAX, false),
            shard(2, half, u128::MAX, true),
            shard(1, 0, half - 1, true),
        ]);
        assert_eq!(map.predict(0), Some(0));
        assert_eq!(map.open_shards()[0].id.as_ref(), "shardId-000000000001");
        assert_eq!(map.predict(half), Some(1));
        assert_eq!(map.predict(u128::MAX), Some(1));
        assert_eq!(map.range_of("shardId-000000000000"), Some(HashKeyRange::FULL));
        assert!(ShardMap::default().predict(5).is_none());
        let gap = ShardMap::new(vec![shard(0, 10, 20, true)]);
        assert_eq!(gap.predict(5), None);
        assert_eq!(gap.predict(21), None);
    }
}
