//! Retry and bisect bookkeeping for one batch: which part of it to invoke next and which parts
//! are settled. Pure (no I/O, no clocks), so Lambda's rules are unit-tested here.
//!
//! A batch is a list of records of one shard lane, in order. It is worked on as a queue of
//! segments (index ranges), always the front one, so the shard never advances past an
//! unsettled record:
//! - success settles the segment as delivered;
//! - a partial failure (`batchItemFailures`) settles the records before the first failed one
//!   as delivered and retries the rest (one retry used);
//! - a function error with bisection on and more than one record splits the segment into two
//!   halves, front half first (no retry used); otherwise it is retried (one retry used);
//! - a segment that has used up `maximum_retry_attempts` retries settles as failed
//!   (`RetryAttemptsExhausted`); records past `maximum_record_age` settle as failed
//!   (`RecordAgeExceeded`) before they are invoked again.

use std::collections::VecDeque;
use std::ops::Range;

/// What the function's invocation of the front segment came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every record done.
    Success,
    /// Records before `first_failed` (an index relative to the segment) are done.
    Partial {
        /// First record to retry, relative to the segment's start.
        first_failed: usize,
    },
    /// A function error (raised, crashed, timed out, invalid answer).
    Failed,
}

/// Why records failed for good (Lambda's on-failure `condition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// `maximum_retry_attempts` used up.
    RetryAttemptsExhausted,
    /// Older than `maximum_record_age`.
    RecordAgeExceeded,
}

impl Condition {
    /// The on-failure record's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::RetryAttemptsExhausted => "RetryAttemptsExhausted",
            Condition::RecordAgeExceeded => "RecordAgeExceeded",
        }
    }
}

/// Records whose fate is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Done.
    Delivered(Range<usize>),
    /// Failed for good, after `invokes` invocations that included them.
    Failed {
        /// The records.
        range: Range<usize>,
        /// Why.
        condition: Condition,
        /// Invocations that included them (`approximateInvokeCount`).
        invokes: u32,
    },
}

/// How the next invocation relates to the last one (for counting and backoff).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A new segment (after success or a settled failure): invoke at once.
    Fresh,
    /// The same records again after a failure: back off first.
    Retry,
    /// The front half of a split segment: invoke at once.
    Bisected,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    range: Range<usize>,
    retries: u32,
    invokes: u32,
}

/// The bookkeeping of one batch.
#[derive(Debug, Clone)]
pub struct BatchPlan {
    queue: VecDeque<Segment>,
    retry_limit: Option<u32>,
    bisect: bool,
}

impl BatchPlan {
    /// A batch of `len` records; `retry_limit` `None` retries forever.
    pub fn new(len: usize, retry_limit: Option<u32>, bisect: bool) -> BatchPlan {
        let mut queue = VecDeque::new();
        if len > 0 {
            queue.push_back(Segment { range: 0..len, retries: 0, invokes: 0 });
        }
        BatchPlan { queue, retry_limit, bisect }
    }

    /// The records to invoke next; `None` once everything is settled.
    pub fn current(&self) -> Option<Range<usize>> {
        self.queue.front().map(|s| s.range.clone())
    }

    /// Settles the first `expired` records of the front segment as too old (they are the oldest:
    /// a lane's records arrive in order).
    pub fn expire_front(&mut self, expired: usize) -> Option<Settled> {
        let seg = self.queue.front_mut()?;
        let expired = expired.min(seg.range.len());
        if expired == 0 {
            return None;
        }
        let range = seg.range.start..seg.range.start + expired;
        let invokes = seg.invokes;
        seg.range.start += expired;
        if seg.range.is_empty() {
            self.queue.pop_front();
        }
        Some(Settled::Failed { range, condition: Condition::RecordAgeExceeded, invokes })
    }

    /// Applies the outcome of invoking [`current`](Self::current); returns what got settled and
    /// how the next invocation (if any) relates to this one.
    pub fn record(&mut self, outcome: Outcome) -> (Vec<Settled>, Next) {
        let Some(mut seg) = self.queue.pop_front() else { return (Vec::new(), Next::Fresh) };
        seg.invokes += 1;
        let mut settled = Vec::new();
        let failed_from = match outcome {
            Outcome::Success => {
                settled.push(Settled::Delivered(seg.range));
                return (settled, Next::Fresh);
            }
            Outcome::Partial { first_failed } if first_failed >= seg.range.len() => {
                settled.push(Settled::Delivered(seg.range));
                return (settled, Next::Fresh);
            }
            Outcome::Partial { first_failed } => Some(first_failed),
            Outcome::Failed => None,
        };
        match failed_from {
            // Checkpoint just before the lowest failed record; retry from there.
            Some(k) if k > 0 => {
                settled.push(Settled::Delivered(seg.range.start..seg.range.start + k));
                seg.range.start += k;
            }
            Some(_) => {}
            None if self.bisect && seg.range.len() > 1 => {
                let mid = seg.range.start + seg.range.len() / 2;
                let back = Segment { range: mid..seg.range.end, retries: seg.retries, invokes: seg.invokes };
                let front = Segment { range: seg.range.start..mid, retries: seg.retries, invokes: seg.invokes };
                self.queue.push_front(back);
                self.queue.push_front(front);
                return (settled, Next::Bisected);
            }
            None => {}
        }
        seg.retries += 1;
        if self.retry_limit.is_some_and(|limit| seg.retries > limit) {
            settled.push(Settled::Failed {
                range: seg.range,
                condition: Condition::RetryAttemptsExhausted,
                invokes: seg.invokes,
            });
            return (settled, Next::Fresh);
        }
        self.queue.push_front(seg);
        (settled, Next::Retry)
    }
}

/// Backoff before the `retry`-th retry of the same records: 100 ms doubling, at most 10 s.
pub fn backoff_ms(retry: u32) -> u64 {
    (100u64 << retry.saturating_sub(1).min(7)).min(10_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a plan against a function that fails any invocation containing `poison`.
    fn run(len: usize, poison: &[usize], limit: Option<u32>, bisect: bool) -> (Vec<Range<usize>>, Vec<Settled>) {
        let mut plan = BatchPlan::new(len, limit, bisect);
        let (mut invoked, mut settled) = (Vec::new(), Vec::new());
        while let Some(r) = plan.current() {
            assert!(invoked.len() < 1000, "runaway");
            invoked.push(r.clone());
            let outcome = if poison.iter().any(|p| r.contains(p)) { Outcome::Failed } else { Outcome::Success };
            settled.extend(plan.record(outcome).0);
        }
        (invoked, settled)
    }

    #[test]
    fn bisect_isolates_a_poison_record_in_log2_plus_one_invocations() {
        for (len, p) in [(8usize, 5usize), (16, 0), (16, 15), (100, 37), (1, 0), (10_000, 9_999)] {
            let (invoked, settled) = run(len, &[p], Some(0), true);
            let with_poison = invoked.iter().filter(|r| r.contains(&p)).count();
            let log2 = (len as f64).log2().ceil() as usize;
            // Halves of an odd length differ by one, so the depth is exact only for powers of 2.
            if len.is_power_of_two() {
                assert_eq!(with_poison, log2 + 1, "len {len}");
            } else {
                assert!(with_poison <= log2 + 1 && with_poison >= log2, "len {len}: {with_poison}");
            }
            let failed: Vec<_> = settled.iter().filter(|s| matches!(s, Settled::Failed { .. })).collect();
            assert_eq!(
                failed,
                vec![&Settled::Failed {
                    range: p..p + 1,
                    condition: Condition::RetryAttemptsExhausted,
                    invokes: with_poison as u32
                }]
            );
            let delivered: usize =
                settled.iter().filter_map(|s| if let Settled::Delivered(r) = s { Some(r.len()) } else { None }).sum();
            assert_eq!(delivered, len - 1);
            // Settled in order: the shard never skips ahead.
            let starts: Vec<usize> = settled
                .iter()
                .map(|s| match s {
                    Settled::Delivered(r) | Settled::Failed { range: r, .. } => r.start,
                })
                .collect();
            assert!(starts.windows(2).all(|w| w[0] < w[1]), "{starts:?}");
        }
    }

    #[test]
    fn without_bisect_the_whole_batch_is_retried_then_fails() {
        let (invoked, settled) = run(10, &[3], Some(2), false);
        assert_eq!(invoked, vec![0..10, 0..10, 0..10]);
        assert_eq!(
            settled,
            vec![Settled::Failed { range: 0..10, condition: Condition::RetryAttemptsExhausted, invokes: 3 }]
        );
    }

    #[test]
    fn partial_failures_checkpoint_before_the_lowest_failed_record() {
        let mut plan = BatchPlan::new(10, Some(1), false);
        assert_eq!(plan.record(Outcome::Partial { first_failed: 4 }), (vec![Settled::Delivered(0..4)], Next::Retry));
        assert_eq!(plan.current(), Some(4..10));
        // The second partial failure uses up the last retry: the rest fails for good.
        let failed = Settled::Failed { range: 6..10, condition: Condition::RetryAttemptsExhausted, invokes: 2 };
        assert_eq!(
            plan.record(Outcome::Partial { first_failed: 2 }),
            (vec![Settled::Delivered(4..6), failed], Next::Fresh)
        );
        assert_eq!(plan.current(), None);
    }

    #[test]
    fn expired_records_fail_before_invocation() {
        let mut plan = BatchPlan::new(5, None, false);
        assert_eq!(plan.record(Outcome::Failed).1, Next::Retry);
        assert_eq!(
            plan.expire_front(2),
            Some(Settled::Failed { range: 0..2, condition: Condition::RecordAgeExceeded, invokes: 1 })
        );
        assert_eq!(plan.current(), Some(2..5));
        assert_eq!(
            plan.expire_front(9),
            Some(Settled::Failed { range: 2..5, condition: Condition::RecordAgeExceeded, invokes: 1 })
        );
        assert_eq!(plan.current(), None);
    }

    #[test]
    fn infinite_retries_never_settle_a_failure() {
        let mut plan = BatchPlan::new(3, None, true);
        for _ in 0..100 {
            let poisoned = plan.current().is_some_and(|r| r.contains(&1));
            let (settled, _) = plan.record(if poisoned { Outcome::Failed } else { Outcome::Success });
            assert!(settled.iter().all(|s| matches!(s, Settled::Delivered(_))));
        }
        assert_eq!(plan.current(), Some(1..2));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!((backoff_ms(1), backoff_ms(2), backoff_ms(3), backoff_ms(30)), (100, 200, 400, 10_000));
    }
}
