//! Group commit: many concurrent callers each wait for their item to be durably stored, and
//! the items are written together, one transaction (one disk sync) per batch rather than per
//! item. Under light load a batch is one item and nothing waits; under heavy load batches grow
//! to `max` and the sync cost is shared.

use haven_platform::store::{StoreError, StoreResult};
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

type Waiter = oneshot::Sender<Result<(), String>>;

/// Which queued items belong in one batch (see [`Batcher::spawn_joined`]): items that share a
/// key.
pub trait Join<T> {
    type Key: std::hash::Hash + Eq;
    /// The keys of `item`, added to `keys`.
    fn keys(&self, item: &T, keys: &mut Vec<Self::Key>);
}

/// Nothing joins.
pub struct NoJoin;

impl<T> Join<T> for NoJoin {
    type Key = ();
    fn keys(&self, _: &T, _: &mut Vec<()>) {}
}

/// Moves up to `max` items of `queued` that share a key with an item of `batch` to the
/// batch's end, in their queued order; the others keep theirs.
fn pull_joined<T, J: Join<T>>(
    join: &J,
    batch: &mut Vec<(T, Waiter)>,
    queued: &mut VecDeque<(T, Waiter)>,
    max: usize,
) {
    if queued.is_empty() {
        return;
    }
    let mut keys = Vec::new();
    for (item, _) in batch.iter() {
        join.keys(item, &mut keys);
    }
    if keys.is_empty() {
        return;
    }
    let led: HashSet<J::Key> = keys.drain(..).collect();
    let mut pulled = 0;
    let mut rest = VecDeque::with_capacity(queued.len());
    for (item, waiter) in queued.drain(..) {
        let joins = pulled < max && {
            join.keys(&item, &mut keys);
            keys.drain(..).any(|k| led.contains(&k))
        };
        if joins {
            batch.push((item, waiter));
            pulled += 1;
        } else {
            rest.push_back((item, waiter));
        }
    }
    *queued = rest;
}

/// The queue of a [`Batcher::spawn_topped`] writer, shared by the batcher and the batches in
/// flight; `None` while the batcher waits on it.
type SharedQueue<T> = Arc<Mutex<Option<mpsc::Receiver<(T, Waiter)>>>>;

/// What a [`Batcher::spawn_topped`] writer can still add to its batch.
pub struct TopUp<T> {
    queue: SharedQueue<T>,
    batch: Arc<Mutex<Slot>>,
}

/// One batch in flight: the waiters it answers, top-ups included.
struct Slot {
    waiters: Vec<Waiter>,
    /// How many more items the batch may take; none once it was written.
    room: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<T> TopUp<T> {
    /// The items queued since the batch was taken, as many as it has room for. Each is
    /// answered with the batch's result.
    pub fn take(&self) -> Vec<T> {
        let mut queue = lock(&self.queue);
        let mut slot = lock(&self.batch);
        let slot = &mut *slot;
        let mut items = Vec::new();
        let Some(rx) = queue.as_mut() else {
            return items;
        };
        while slot.room > 0 {
            match rx.try_recv() {
                Ok((item, waiter)) => {
                    items.push(item);
                    slot.waiters.push(waiter);
                    slot.room -= 1;
                }
                Err(_) => break,
            }
        }
        items
    }
}

/// How many batches a [`Batcher::spawn_topped`] writer has in flight at most. With two, the
/// next batch is already waiting for the shared resource when the one before releases it,
/// and starts at once with what it tops up, instead of after the batcher's task has been
/// woken, answered the batch before and taken the next one: on two busy cores that wake-up
/// took as long as a commit.
const TOPPED_IN_FLIGHT: usize = 2;

pub struct Batcher<T> {
    tx: mpsc::Sender<(T, Waiter)>,
}

impl<T> Clone for Batcher<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Batcher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Batcher")
    }
}

/// After a batch was written: its metrics, then each waiter's answer.
fn answer(
    name: &'static str,
    started: std::time::Instant,
    result: StoreResult<()>,
    waiters: Vec<Waiter>,
) {
    metrics::histogram!("haven_group_commit_seconds", "batch" => name)
        .record(started.elapsed().as_secs_f64());
    metrics::histogram!("haven_group_commit_batch_size", "batch" => name)
        .record(waiters.len() as f64);
    let result = result.map_err(|e| e.to_string());
    for w in waiters {
        let _ = w.send(result.clone());
    }
}

impl<T: Send + 'static> Batcher<T> {
    /// Starts the writer task. `write` stores one batch in one transaction. `name` labels
    /// the metrics `haven_group_commit_batch_size{batch}` and `haven_group_commit_seconds{batch}`.
    pub fn spawn<F, Fut>(name: &'static str, max: usize, write: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = StoreResult<()>> + Send,
    {
        Self::spawn_paced(name, max, std::time::Duration::ZERO, write)
    }

    /// As [`Self::spawn`], but batches start at least `pace` apart: for background writes
    /// (outcomes, receipts) that nobody waits on at the API, so they take the one write
    /// connection less often, in bigger batches, and acceptance (which a caller waits on)
    /// gets it sooner. A full batch is followed at once by the next: `max` bounds how long
    /// one batch holds the writer, the pace only gathers items when there are few.
    pub fn spawn_paced<F, Fut>(
        name: &'static str,
        max: usize,
        pace: std::time::Duration,
        write: F,
    ) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = StoreResult<()>> + Send,
    {
        Self::spawn_joined(name, max, pace, NoJoin, write)
    }

    /// As [`Self::spawn_paced`], and a batch also takes the items queued behind it that share
    /// a key with one of its own (at most `max` more, see [`Join`]), ahead of their turn: for
    /// writes that are cheaper together, such as a delivery receipt with its submit's outcome.
    /// Every other item keeps its place in the queue.
    pub fn spawn_joined<F, Fut, J>(
        name: &'static str,
        max: usize,
        pace: std::time::Duration,
        join: J,
        write: F,
    ) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = StoreResult<()>> + Send,
        J: Join<T> + Send + 'static,
    {
        let max = max.max(1);
        // What is queued: in the channel, and taken from it but not yet written. The two
        // together hold at most twice the channel's bound.
        let bound = max * 4;
        let (tx, mut rx) = mpsc::channel::<(T, Waiter)>(bound);
        let write = Arc::new(write);
        tokio::spawn(async move {
            let mut queued: VecDeque<(T, Waiter)> = VecDeque::with_capacity(bound);
            let mut buf = Vec::with_capacity(bound);
            loop {
                if queued.is_empty() {
                    if rx.recv_many(&mut buf, bound).await == 0 {
                        break;
                    }
                } else {
                    while buf.len() + queued.len() < bound {
                        match rx.try_recv() {
                            Ok(item) => buf.push(item),
                            Err(_) => break,
                        }
                    }
                }
                queued.extend(buf.drain(..));
                let take = queued.len().min(max);
                let full = take >= max;
                let mut batch: Vec<(T, Waiter)> = queued.drain(..take).collect();
                pull_joined(&join, &mut batch, &mut queued, max);
                let (items, waiters): (Vec<T>, Vec<Waiter>) = batch.into_iter().unzip();
                let started = std::time::Instant::now();
                let result = write(items).await;
                answer(name, started, result, waiters);
                if !pace.is_zero() && !full {
                    tokio::time::sleep_until((started + pace).into()).await;
                }
            }
        });
        Self { tx }
    }

    /// As [`Self::spawn`], and `write` may add to its batch what was queued since it was
    /// taken ([`TopUp::take`], up to `max` items in all): a writer that first waits for a
    /// shared resource (SQLite's one write connection) takes, once it has it, the items that
    /// came in meanwhile, instead of leaving them to wait for the resource once more in the
    /// next batch. Batches grow with the wait, and nothing waits longer than it did. Up to
    /// [`TOPPED_IN_FLIGHT`] batches are written at once, each answering its own waiters.
    pub fn spawn_topped<F, Fut>(name: &'static str, max: usize, write: F) -> Self
    where
        F: Fn(Vec<T>, TopUp<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = StoreResult<()>> + Send + 'static,
    {
        let max = max.max(1);
        let (tx, rx) = mpsc::channel::<(T, Waiter)>(max * 4);
        let queue: SharedQueue<T> = Arc::new(Mutex::new(Some(rx)));
        let write = Arc::new(write);
        let in_flight = Arc::new(tokio::sync::Semaphore::new(TOPPED_IN_FLIGHT));
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(max);
            loop {
                // Room for one more batch first: meanwhile the queue stays with the batches
                // in flight, for their top-ups.
                let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                    break;
                };
                let Some(mut rx) = lock(&queue).take() else {
                    break;
                };
                let n = rx.recv_many(&mut buf, max).await;
                *lock(&queue) = Some(rx);
                if n == 0 {
                    break;
                }
                let (items, waiters): (Vec<T>, Vec<Waiter>) = buf.drain(..).unzip();
                let batch = Arc::new(Mutex::new(Slot {
                    room: max.saturating_sub(items.len()),
                    waiters,
                }));
                let top_up = TopUp {
                    queue: Arc::clone(&queue),
                    batch: Arc::clone(&batch),
                };
                let write = Arc::clone(&write);
                tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    let result = write(items, top_up).await;
                    let waiters = {
                        let mut slot = lock(&batch);
                        // A top-up kept past its batch takes nothing more.
                        slot.room = 0;
                        std::mem::take(&mut slot.waiters)
                    };
                    answer(name, started, result, waiters);
                    drop(permit);
                });
            }
        });
        Self { tx }
    }

    /// Returns once the item is stored (or its batch failed).
    pub async fn submit(&self, item: T) -> StoreResult<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((item, done))
            .await
            .map_err(|_| StoreError::Backend("the writer stopped".to_owned()))?;
        wait.await
            .map_err(|_| StoreError::Backend("the writer stopped".to_owned()))?
            .map_err(StoreError::Backend)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn concurrent_items_share_batches() {
        let batches = Arc::new(Mutex::new(Vec::<usize>::new()));
        let seen = batches.clone();
        let b = Batcher::spawn("test", 64, move |items: Vec<u32>| {
            let seen = seen.clone();
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                seen.lock().unwrap().push(items.len());
                Ok(())
            }
        });
        let mut tasks = Vec::new();
        for i in 0..200 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move { b.submit(i).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let batches = batches.lock().unwrap();
        assert_eq!(batches.iter().sum::<usize>(), 200);
        assert!(batches.len() < 200, "items were grouped: {batches:?}");
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_waiter() {
        let b = Batcher::spawn("test", 8, |_: Vec<u32>| async {
            Err(StoreError::Backend("disk full".into()))
        });
        assert!(b.submit(1).await.is_err());
    }

    /// 2k and 2k + 1 share a key; 100 has none.
    struct Pairs;

    impl Join<u32> for Pairs {
        type Key = u32;
        fn keys(&self, item: &u32, keys: &mut Vec<u32>) {
            if *item != 100 {
                keys.push(item / 2);
            }
        }
    }

    fn queue(items: &[u32]) -> VecDeque<(u32, Waiter)> {
        items.iter().map(|&i| (i, oneshot::channel().0)).collect()
    }

    #[test]
    fn items_sharing_a_key_join_the_batch_and_the_rest_keep_their_order() {
        let mut batch: Vec<(u32, Waiter)> = queue(&[10, 21, 30]).into_iter().collect();
        let mut queued = queue(&[40, 11, 33, 31, 50, 31, 20, 41, 11]);
        pull_joined(&Pairs, &mut batch, &mut queued, 8);
        let batch: Vec<u32> = batch.into_iter().map(|(i, _)| i).collect();
        let queued: Vec<u32> = queued.into_iter().map(|(i, _)| i).collect();
        // 11, 31 (twice) and 20 share a key with 10, 30 and 21, and join in queued order;
        // 33 and 41 share none.
        assert_eq!(batch, vec![10, 21, 30, 11, 31, 31, 20, 11]);
        assert_eq!(queued, vec![40, 33, 50, 41]);
    }

    #[test]
    fn at_most_max_items_join() {
        let mut batch: Vec<(u32, Waiter)> = queue(&[10]).into_iter().collect();
        let mut queued = queue(&[11, 11, 11, 12]);
        pull_joined(&Pairs, &mut batch, &mut queued, 2);
        assert_eq!(batch.len(), 3);
        let queued: Vec<u32> = queued.into_iter().map(|(i, _)| i).collect();
        assert_eq!(queued, vec![11, 12]);
    }

    #[tokio::test]
    async fn items_queued_behind_a_full_batch_are_written_with_those_sharing_their_key() {
        let batches = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let seen = batches.clone();
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
        let b = Batcher::spawn_joined(
            "test",
            4,
            std::time::Duration::ZERO,
            Pairs,
            move |items: Vec<u32>| {
                let seen = seen.clone();
                let mut gate = gate_rx.clone();
                async move {
                    // The first batch waits until everything is queued behind it.
                    let _ = gate.wait_for(|open| *open).await;
                    seen.lock().unwrap().push(items);
                    Ok(())
                }
            },
        );
        let mut tasks = Vec::new();
        for i in [100u32, 2, 4, 9, 6, 10, 12, 14, 3, 8] {
            let b = b.clone();
            tasks.push(tokio::spawn(async move { b.submit(i).await }));
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        gate_tx.send(true).unwrap();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let batches = batches.lock().unwrap();
        // [100] alone (it holds the writer until the rest are queued), then [2, 4, 9, 6] with
        // 3 and 8 pulled forward past 10, 12 and 14: 3 shares 2's key, 8 shares 9's (queued
        // before it). Without the join, 3 and 8 wait their turn in the next batches.
        let with = |n: u32| batches.iter().position(|b| b.contains(&n)).unwrap();
        assert_eq!(with(3), with(2));
        assert_eq!(with(9), with(8));
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 10);
        assert!(batches.iter().all(|b| b.len() <= 8));
    }

    #[tokio::test]
    async fn a_topped_up_batch_takes_what_came_while_it_waited_and_answers_it() {
        let batches = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let kept = Arc::new(Mutex::new(None::<TopUp<u32>>));
        let (seen, keep) = (batches.clone(), kept.clone());
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
        let b = Batcher::spawn_topped("test", 4, move |mut items: Vec<u32>, more: TopUp<u32>| {
            let (seen, keep) = (seen.clone(), keep.clone());
            let mut gate = gate_rx.clone();
            async move {
                // Waits for "the writer", then takes what was queued meanwhile.
                let _ = gate.wait_for(|open| *open).await;
                items.extend(more.take());
                seen.lock().unwrap().push(items);
                *keep.lock().unwrap() = Some(more);
                Ok(())
            }
        });
        let mut tasks = Vec::new();
        for i in 0..7u32 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move { b.submit(i).await }));
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        gate_tx.send(true).unwrap();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let mut got = batches.lock().unwrap().clone();
        got.sort();
        // 0 was taken alone, and 1 alone by the second batch in flight; 2 to 6 came while
        // both waited, and each topped up to the bound of 4 with them, in whichever order
        // the two went. Every waiter is answered, and no third batch was needed.
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0][0], got[1][0]), (0, 1), "{got:?}");
        assert!(got.iter().all(|b| b.len() <= 4), "{got:?}");
        let mut all: Vec<u32> = got.concat();
        all.sort_unstable();
        assert_eq!(all, (0..7).collect::<Vec<u32>>());
        // A top-up kept past its batch takes nothing, even with items queued.
        let stale = kept.lock().unwrap().take().unwrap();
        let mut late = tokio::spawn({
            let b = b.clone();
            async move { b.submit(9).await }
        });
        assert!(stale.take().is_empty());
        tokio::time::timeout(std::time::Duration::from_secs(5), &mut late)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn two_topped_batches_are_in_flight_at_once_and_a_third_waits_for_one() {
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = started.clone();
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
        let b = Batcher::spawn_topped("test", 4, move |_items: Vec<u32>, _more: TopUp<u32>| {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut gate = gate_rx.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
                Ok(())
            }
        });
        let writes = || started.load(std::sync::atomic::Ordering::SeqCst);
        let mut tasks = Vec::new();
        for i in 0..3u32 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move { b.submit(i).await }));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // 0 and 1 are being written, each in its own batch; 2 waits for room.
        assert_eq!(writes(), 2);
        gate_tx.send(true).unwrap();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(writes(), 3);
    }
}
