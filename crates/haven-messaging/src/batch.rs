//! Group commit: many concurrent callers each wait for their item to be durably stored, and
//! the items are written together, one transaction (one disk sync) per batch rather than per
//! item. Under light load a batch is one item and nothing waits; under heavy load batches grow
//! to `max` and the sync cost is shared.

use haven_platform::store::{StoreError, StoreResult};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

type Waiter = oneshot::Sender<Result<(), String>>;

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
        let max = max.max(1);
        let (tx, mut rx) = mpsc::channel::<(T, Waiter)>(max * 4);
        let write = Arc::new(write);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(max);
            while rx.recv_many(&mut buf, max).await > 0 {
                let (items, waiters): (Vec<T>, Vec<Waiter>) = buf.drain(..).unzip();
                let full = items.len() >= max;
                metrics::histogram!("haven_group_commit_batch_size", "batch" => name)
                    .record(items.len() as f64);
                let started = std::time::Instant::now();
                let result = write(items).await.map_err(|e| e.to_string());
                metrics::histogram!("haven_group_commit_seconds", "batch" => name)
                    .record(started.elapsed().as_secs_f64());
                for w in waiters {
                    let _ = w.send(result.clone());
                }
                if !pace.is_zero() && !full {
                    tokio::time::sleep_until((started + pace).into()).await;
                }
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
}
