//! Property test: random append / read / reopen / trim sequences behave like an in-memory model.

mod common;

use common::*;
use proptest::prelude::*;
use sluice_storage::{Durability, Store};

const SHARDS: u32 = 3;

#[derive(Debug, Clone)]
enum Op {
    /// (shard, key length, data length, fill byte)
    Append(Vec<(u32, usize, usize, u8)>),
    /// shard, start as a fraction of the retained range (may point past the tip), max records,
    /// max bytes
    Read(u32, u16, usize, usize),
    Reopen,
    /// Retention with a clock far in the future: every sealed segment goes.
    TrimAll,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec((0..SHARDS, 0usize..12, 0usize..300, any::<u8>()), 1..12).prop_map(Op::Append),
        5 => (0..SHARDS, 0u16..1100, 1usize..25, 1usize..2000).prop_map(|(s, f, n, b)| Op::Read(s, f, n, b)),
        1 => Just(Op::Reopen),
        1 => Just(Op::TrimAll),
    ]
}

/// What the model knows about one shard: every record ever appended (by ordinal - 1) and the
/// first retained ordinal.
#[derive(Default)]
struct ModelShard {
    records: Vec<(String, Vec<u8>)>,
    first: u64,
}

fn run(segment_bytes: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut store = Some(open(dir.path(), segment_bytes, Durability::Os));
    create_stream(store.as_ref().unwrap(), STREAM, TAG, SHARDS);
    let mut model: Vec<ModelShard> = (0..SHARDS).map(|_| ModelShard { first: 1, ..Default::default() }).collect();
    let mut counter = 0u32;
    for op in ops {
        let s: &Store = store.as_ref().unwrap();
        match op {
            Op::Append(recs) => {
                let recs: Vec<_> = recs
                    .into_iter()
                    .map(|(shard, kl, dl, fill)| {
                        counter += 1;
                        let pk: String = format!("{counter}-{}", "k".repeat(kl));
                        let data: Vec<u8> = (0..dl).map(|i| fill.wrapping_add(i as u8)).collect();
                        rec(shard, &pk, &data)
                    })
                    .collect();
                let acks = rt.block_on(s.append(STREAM, TAG, recs.clone())).unwrap();
                for (r, a) in recs.into_iter().zip(acks) {
                    let m = &mut model[r.shard as usize];
                    m.records.push((r.partition_key, r.data.to_vec()));
                    prop_assert_eq!(a.ordinal, m.records.len() as u64);
                }
            }
            Op::Read(shard, frac, max_records, max_bytes) => {
                let m = &model[shard as usize];
                let next = m.records.len() as u64 + 1;
                let from = m.first.saturating_sub(1) + u64::from(frac) * (next + 2 - m.first.saturating_sub(1)) / 1000;
                let b = s.read(STREAM, TAG, shard, from, max_records, max_bytes).unwrap();
                prop_assert_eq!(b.tip.next_ordinal, next);
                prop_assert_eq!(b.tip.first_ordinal, m.first);
                let start = from.max(m.first);
                if start >= next {
                    prop_assert!(b.records.is_empty());
                    prop_assert_eq!(b.next_ordinal, start);
                    continue;
                }
                prop_assert!(!b.records.is_empty());
                prop_assert!(b.records.len() <= max_records);
                let mut bytes = 0;
                for (k, r) in b.records.iter().enumerate() {
                    let ord = start + k as u64;
                    prop_assert_eq!(r.ordinal, ord);
                    let (pk, data) = &m.records[(ord - 1) as usize];
                    prop_assert_eq!(&r.partition_key, pk);
                    prop_assert_eq!(&r.data, data);
                    bytes += pk.len() + data.len();
                }
                prop_assert!(b.records.len() == 1 || bytes <= max_bytes);
                prop_assert_eq!(b.next_ordinal, start + b.records.len() as u64);
                // Stopped early only because of a limit.
                if b.next_ordinal < next && b.records.len() < max_records {
                    let (pk, data) = &m.records[(b.next_ordinal - 1) as usize];
                    prop_assert!(bytes + pk.len() + data.len() > max_bytes);
                }
            }
            Op::Reopen => {
                drop(store.take());
                store = Some(open(dir.path(), segment_bytes, Durability::Os));
            }
            Op::TrimAll => {
                let far = u64::MAX / 2;
                s.enforce_retention(far).unwrap();
                for (shard, m) in model.iter_mut().enumerate() {
                    let pos = s.shard_position(STREAM, TAG, shard as u32).unwrap();
                    prop_assert!(pos.first_ordinal >= m.first);
                    prop_assert!(pos.first_ordinal <= pos.next_ordinal);
                    if !m.records.is_empty() {
                        prop_assert!(pos.first_ordinal < pos.next_ordinal, "newest segment kept");
                    }
                    m.first = pos.first_ordinal;
                }
            }
        }
    }
    // Final full check, after one more reopen.
    drop(store);
    let s = open(dir.path(), segment_bytes, Durability::Os);
    for (shard, m) in model.iter().enumerate() {
        let got = read_all(&s, STREAM, TAG, shard as u32, 17);
        let want = &m.records[(m.first - 1) as usize..];
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            prop_assert_eq!((&g.partition_key, &g.data), (&w.0, &w.1));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_match_the_model(segment_bytes in 60u64..3000, ops in prop::collection::vec(op(), 1..40)) {
        run(segment_bytes, ops)?;
    }
}
