//! Rendered summary answers of the newest read snapshot, kept for the next
//! request that asks the same of the same snapshot.
//!
//! A dashboard reloads the same few summaries every few seconds, often from
//! several screens at once, and the biggest of them (a tenant's whole history
//! by day) renders hundreds of kilobytes. The store changes only when a batch
//! commits; between two commits every such request would compute the same
//! bytes. An answer is kept under the [`SnapshotId`] it was computed from, the
//! tenants it covers and the request's parameters, so a hit is exactly the
//! answer a fresh computation would give: a commit changes the id, and the
//! first answer of the new snapshot drops every older one. Requests that ask
//! what another request of the same snapshot is computing wait for its
//! answer instead of computing it again: after a commit, the first reload
//! computes and the ones arriving meanwhile share it.
//!
//! Bounded by bytes (`serve --summary-cache-mib`, 0 turns it off); past the
//! bound the oldest answers go first. Counted in
//! `refund_projector_summary_answers_total{outcome}`: `hit`, `miss`,
//! `shared` (waited for a request computing it), or `uncached` (the bound is
//! 0).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

use axum::body::Bytes;
use refunds_store::SnapshotId;

/// The default bound: enough for dozens of the biggest answers.
pub const DEFAULT_BYTES: usize = 64 << 20;

pub struct Answers {
    max_bytes: usize,
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    snapshot: Option<SnapshotId>,
    answers: HashMap<String, Bytes>,
    /// Keys in the order they were kept, for eviction.
    order: VecDeque<String>,
    bytes: usize,
    /// Answers being computed, of any snapshot.
    computing: HashMap<(SnapshotId, String), Arc<Pending>>,
}

/// An answer one request computes for others: `None` until it is done, then
/// the answer, or `None` inside when it failed (a waiter then computes).
#[derive(Default)]
struct Pending {
    done: Mutex<Option<Option<Bytes>>>,
    ready: Condvar,
}

impl Pending {
    fn finish(&self, answer: Option<Bytes>) {
        *self.done.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(answer);
        self.ready.notify_all();
    }

    fn wait(&self) -> Option<Bytes> {
        let mut done = self.done.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(answer) = done.as_ref() {
                return answer.clone();
            }
            done = self.ready.wait(done).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// Ends a computation that returned early (an error, a panic) as failed, so
/// that no waiter waits for ever.
struct Computing<'a> {
    answers: &'a Answers,
    id: Option<(SnapshotId, String)>,
    pending: Arc<Pending>,
}

impl Drop for Computing<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.answers.lock().computing.remove(&id);
            self.pending.finish(None);
        }
    }
}

impl Kept {
    fn clear(&mut self, snapshot: SnapshotId) {
        self.snapshot = Some(snapshot);
        self.answers.clear();
        self.order.clear();
        self.bytes = 0;
    }
}

impl Default for Answers {
    fn default() -> Answers {
        Answers::new(DEFAULT_BYTES)
    }
}

impl Answers {
    pub fn new(max_bytes: usize) -> Answers {
        Answers { max_bytes, kept: Mutex::new(Kept::default()) }
    }

    /// The kept answer to `key` in `snapshot`, or the one `compute` renders
    /// (then kept when it fits).
    pub fn get_or_compute<E>(
        &self,
        snapshot: SnapshotId,
        key: impl FnOnce() -> String,
        compute: impl FnOnce() -> Result<Bytes, E>,
    ) -> Result<Bytes, E> {
        if self.max_bytes == 0 {
            count("uncached");
            return compute();
        }
        let key = key();
        let id = (snapshot, key);
        let pending = {
            let mut kept = self.lock();
            if kept.snapshot == Some(snapshot)
                && let Some(hit) = kept.answers.get(&id.1)
            {
                count("hit");
                return Ok(hit.clone());
            }
            match kept.computing.get(&id) {
                Some(pending) => Err(pending.clone()),
                None => {
                    let pending = Arc::new(Pending::default());
                    kept.computing.insert(id.clone(), pending.clone());
                    Ok(pending)
                }
            }
        };
        let pending = match pending {
            Ok(pending) => pending,
            Err(other) => {
                if let Some(answer) = other.wait() {
                    count("shared");
                    return Ok(answer);
                }
                // It failed: try once more here, alone.
                count("miss");
                return compute();
            }
        };
        count("miss");
        let mut computing = Computing { answers: self, id: Some(id), pending };
        let answer = compute()?;
        let id = computing.id.take().expect("taken only here or on drop");
        {
            let mut kept = self.lock();
            kept.computing.remove(&id);
            let (snapshot, key) = id;
            self.keep(&mut kept, snapshot, key, answer.clone());
        }
        computing.pending.finish(Some(answer.clone()));
        Ok(answer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn keep(&self, kept: &mut Kept, snapshot: SnapshotId, key: String, answer: Bytes) {
        let size = key.len() + answer.len();
        if size > self.max_bytes {
            return;
        }
        match kept.snapshot {
            Some(current) if current == snapshot => {}
            // A request that read an older snapshot finished late.
            Some(current) if snapshot.newer_than(current) == Some(false) => return,
            _ => kept.clear(snapshot),
        }
        if kept.answers.contains_key(&key) {
            return;
        }
        while kept.bytes + size > self.max_bytes {
            let Some(oldest) = kept.order.pop_front() else { break };
            if let Some(gone) = kept.answers.remove(&oldest) {
                kept.bytes -= oldest.len() + gone.len();
            }
        }
        kept.bytes += size;
        kept.order.push_back(key.clone());
        kept.answers.insert(key, answer);
    }
}

fn count(outcome: &'static str) {
    metrics::counter!("refund_projector_summary_answers_total", "outcome" => outcome).increment(1);
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use refunds_store::{Batch, Durability, Store, StoreParams};

    use super::*;

    fn store(dir: &tempfile::TempDir, name: &str) -> Store {
        Store::open(&dir.path().join(name), &StoreParams { cache_bytes: 1 << 20 }).unwrap()
    }

    fn snapshot(store: &Store) -> SnapshotId {
        store.snapshot_id(&store.read().unwrap()).unwrap()
    }

    fn commit(store: &Store) {
        store.apply_batch(&Batch::default(), Durability::None).unwrap();
    }

    /// Asks `answers` for `key` in `snapshot`; returns the answer and
    /// whether it was computed.
    fn ask(answers: &Answers, snapshot: SnapshotId, key: &str, body: &str) -> (Bytes, bool) {
        let computed = Cell::new(false);
        let answer = answers
            .get_or_compute(
                snapshot,
                || key.to_owned(),
                || {
                    computed.set(true);
                    Ok::<_, ()>(Bytes::from(body.to_owned()))
                },
            )
            .unwrap();
        (answer, computed.get())
    }

    #[test]
    fn snapshot_ids_change_with_every_commit_and_differ_between_stores() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (store(&dir, "one.redb"), store(&dir, "two.redb"));
        let held = one.read().unwrap();
        let first = one.snapshot_id(&held).unwrap();
        assert_eq!(snapshot(&one), first, "no commit between two reads");
        commit(&one);
        let second = snapshot(&one);
        assert_ne!(second, first);
        assert_eq!(one.snapshot_id(&held).unwrap(), first, "a snapshot begun before a commit keeps its id");
        assert_eq!(second.newer_than(first), Some(true));
        assert_eq!(first.newer_than(second), Some(false));
        assert_eq!(snapshot(&two).newer_than(first), None, "another store's snapshots are not ordered with these");
    }

    #[test]
    fn an_answer_serves_its_own_snapshot_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir, "store.redb");
        let answers = Answers::new(1 << 20);
        let old = snapshot(&store);
        assert_eq!(ask(&answers, old, "k", "old"), (Bytes::from("old"), true));
        assert_eq!(ask(&answers, old, "k", "unused"), (Bytes::from("old"), false), "kept");
        assert_eq!(ask(&answers, old, "other", "o"), (Bytes::from("o"), true), "another request");

        commit(&store);
        let new = snapshot(&store);
        assert_eq!(ask(&answers, new, "k", "new"), (Bytes::from("new"), true), "a commit makes it stale");
        // A request that read the old snapshot and finishes now is answered
        // from it, and does not displace the newer answers.
        assert_eq!(ask(&answers, old, "k", "old again"), (Bytes::from("old again"), true));
        assert_eq!(ask(&answers, new, "k", "unused"), (Bytes::from("new"), false));
        assert_eq!(ask(&answers, old, "other", "o2"), (Bytes::from("o2"), true), "older answers were dropped");
    }

    #[test]
    fn nothing_is_kept_without_room() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir, "store.redb");
        let now = snapshot(&store);
        let off = Answers::new(0);
        ask(&off, now, "k", "a");
        assert!(ask(&off, now, "k", "a").1, "a zero bound keeps nothing");
        let small = Answers::new(10);
        ask(&small, now, "k", "much more than ten bytes");
        assert!(ask(&small, now, "k", "much more than ten bytes").1, "an answer over the bound is not kept");
    }

    /// Starts a request computing `key` (its computation waits for the
    /// returned sender), then a second request for the same key once the
    /// first computes; lets the first finish with `first` once the second
    /// waits. Returns the second's answer and whether it computed.
    fn two_at_once(first: Result<&'static str, ()>) -> (Result<Bytes, ()>, bool) {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir, "store.redb");
        let now = snapshot(&store);
        // Too small to keep anything: the second can only get the first's
        // answer by waiting for it.
        let answers = Answers::new(4);
        let answers = &answers;
        let (release, released) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|scope| {
            scope.spawn(move || {
                answers.get_or_compute(
                    now,
                    || "k".to_owned(),
                    || {
                        released.recv().unwrap();
                        first.map(|text| Bytes::from_static(text.as_bytes()))
                    },
                )
            });
            let pending = loop {
                if let Some(pending) = answers.lock().computing.get(&(now, "k".to_owned())) {
                    break pending.clone();
                }
                std::thread::yield_now();
            };
            let second = scope.spawn(|| {
                let computed = Cell::new(false);
                let answer = answers.get_or_compute(
                    now,
                    || "k".to_owned(),
                    || {
                        computed.set(true);
                        Ok(Bytes::from_static(b"computed by the second"))
                    },
                );
                (answer, computed.get())
            });
            // The map, the first request and this test hold it; the second
            // makes four once it waits.
            while Arc::strong_count(&pending) < 4 {
                std::thread::yield_now();
            }
            release.send(()).unwrap();
            second.join().unwrap()
        })
    }

    #[test]
    fn a_request_waits_for_the_same_answer_being_computed() {
        assert_eq!(two_at_once(Ok("computed by the first")), (Ok(Bytes::from_static(b"computed by the first")), false));
    }

    #[test]
    fn a_failed_computation_leaves_its_waiters_to_compute() {
        assert_eq!(two_at_once(Err(())), (Ok(Bytes::from_static(b"computed by the second")), true));
    }

    #[test]
    fn past_the_bound_the_oldest_answers_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir, "store.redb");
        let now = snapshot(&store);
        // Each entry costs its key and body: 1 + 9 bytes.
        let answers = Answers::new(25);
        for key in ["a", "b", "c"] {
            ask(&answers, now, key, "123456789");
        }
        assert!(ask(&answers, now, "a", "123456789").1, "the oldest went to make room for c");
        assert!(!ask(&answers, now, "c", "123456789").1, "the newest stays");
        assert!(ask(&answers, now, "b", "123456789").1, "b went to make room for a again");
    }
}
