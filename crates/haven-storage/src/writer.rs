//! The SQLite write connection's lock: foreground writers (a request waits on them) go before
//! background writers (sending loops, receipts, queued audit events) that are waiting at the
//! same moment; each class is first come, first served.
//!
//! SQLite has one writer, so every commit queues for it. With a plain fair mutex an accepting
//! request's group commit that arrived just after a background batch waited for that batch's
//! whole transaction as well as for the one in progress. Here it waits only for the one in
//! progress. A background writer is never put off for longer than [`MAX_DEFER`]: once the
//! oldest has waited that long, it goes next, so a steady foreground load cannot starve the
//! sending loops.

use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The longest a background writer is passed over for foreground writers that came after it.
pub(crate) const MAX_DEFER: Duration = Duration::from_millis(10);

/// Who is asking for the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Foreground,
    Background,
}

struct State<T> {
    /// The value while nobody holds it (`None` while held, or once closed).
    value: Option<T>,
    held: bool,
    closed: bool,
    foreground: VecDeque<oneshot::Sender<()>>,
    background: VecDeque<(Instant, oneshot::Sender<()>)>,
}

pub(crate) struct PriorityLock<T> {
    state: std::sync::Mutex<State<T>>,
    max_defer: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LockError {
    Closed,
}

/// The value while it is held; handed to the next waiter when dropped.
pub(crate) struct Held<'a, T> {
    value: Option<T>,
    lock: &'a PriorityLock<T>,
}

impl<T> std::ops::Deref for Held<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // Present from creation until drop.
        self.value.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl<T> std::ops::DerefMut for Held<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.value.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl<T> Drop for Held<'_, T> {
    fn drop(&mut self) {
        self.lock.release(self.value.take());
    }
}

/// A caller's turn: at once, or when the receiver says so.
enum Turn<'a, T> {
    Now(Held<'a, T>),
    Later(oneshot::Receiver<()>),
}

/// A place in the queue. Dropped before its turn came (the caller gave up), it leaves the
/// queue; dropped after its turn came but before it was taken, it passes the turn on.
struct Waiting<'a, T> {
    rx: Option<oneshot::Receiver<()>>,
    lock: &'a PriorityLock<T>,
}

impl<T> Drop for Waiting<'_, T> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                self.lock.release(None);
            }
        }
    }
}

impl<T> PriorityLock<T> {
    pub(crate) fn new(value: T) -> Self {
        Self::with_max_defer(value, MAX_DEFER)
    }

    /// A background writer is passed over for at most `max_defer`.
    pub(crate) fn with_max_defer(value: T, max_defer: Duration) -> Self {
        Self {
            max_defer,
            state: std::sync::Mutex::new(State {
                value: Some(value),
                held: false,
                closed: false,
                foreground: VecDeque::new(),
                background: VecDeque::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        // Nothing panics while the state is locked; a poisoned lock still holds a valid state.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the value at once when nobody holds it; else queues the caller.
    fn enqueue(&self, class: Class) -> Result<Turn<'_, T>, LockError> {
        let mut s = self.state();
        if s.closed {
            return Err(LockError::Closed);
        }
        if !s.held {
            s.held = true;
            let value = s.value.take();
            return Ok(Turn::Now(Held { value, lock: self }));
        }
        let (tx, rx) = oneshot::channel();
        match class {
            Class::Foreground => s.foreground.push_back(tx),
            Class::Background => s.background.push_back((Instant::now(), tx)),
        }
        Ok(Turn::Later(rx))
    }

    /// The value once the caller's turn has come (`granted`), or the refusal of a closed lock.
    fn granted(&self, granted: bool) -> Result<Held<'_, T>, LockError> {
        let mut s = self.state();
        if !granted || s.closed {
            // Closed while waiting: the senders were dropped, or the turn came with nothing.
            drop(s);
            if granted {
                self.release(None);
            }
            return Err(LockError::Closed);
        }
        let value = s.value.take();
        Ok(Held { value, lock: self })
    }

    /// Waits for the value; foreground callers are served before background ones.
    pub(crate) async fn lock(&self, class: Class) -> Result<Held<'_, T>, LockError> {
        let rx = match self.enqueue(class)? {
            Turn::Now(held) => return Ok(held),
            Turn::Later(rx) => rx,
        };
        let mut waiting = Waiting {
            rx: Some(rx),
            lock: self,
        };
        let granted = match waiting.rx.as_mut() {
            Some(rx) => rx.await.is_ok(),
            None => false,
        };
        waiting.rx = None;
        self.granted(granted)
    }

    /// [`Self::lock`] for a thread of its own outside the runtime (the SQLite writer thread,
    /// see `direct`): the thread blocks until its turn. Never call it on a runtime thread.
    pub(crate) fn lock_blocking(&self, class: Class) -> Result<Held<'_, T>, LockError> {
        match self.enqueue(class)? {
            Turn::Now(held) => Ok(held),
            Turn::Later(rx) => self.granted(rx.blocking_recv().is_ok()),
        }
    }

    /// Whether anyone is waiting for the value (a holder with more to do lets them go first).
    pub(crate) fn has_waiters(&self) -> bool {
        let s = self.state();
        !s.foreground.is_empty() || !s.background.is_empty()
    }

    /// Takes the value for good: every later or waiting caller gets [`LockError::Closed`].
    pub(crate) async fn close(&self) -> Option<T> {
        let mut held = self.lock(Class::Foreground).await.ok()?;
        let value = held.value.take();
        let mut s = self.state();
        s.closed = true;
        s.foreground.clear();
        s.background.clear();
        drop(s);
        value
    }

    /// Puts the value back and gives the turn to the next waiter, if any.
    fn release(&self, value: Option<T>) {
        let mut s = self.state();
        if value.is_some() {
            s.value = value;
        }
        loop {
            let overdue = s
                .background
                .front()
                .is_some_and(|(since, _)| since.elapsed() >= self.max_defer);
            let next = if overdue {
                s.background.pop_front().map(|(_, tx)| tx)
            } else {
                s.foreground
                    .pop_front()
                    .or_else(|| s.background.pop_front().map(|(_, tx)| tx))
            };
            match next {
                // A waiter that has given up refuses the turn; try the next.
                Some(tx) => {
                    if tx.send(()).is_ok() {
                        return;
                    }
                }
                None => {
                    s.held = false;
                    return;
                }
            }
        }
    }

    /// Whether the value is gone for good (for the checkpoint loop).
    pub(crate) fn is_closed(&self) -> bool {
        self.state().closed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Starts a task that takes the lock, records `tag`, and holds it briefly.
    fn take(
        lock: &Arc<PriorityLock<Vec<&'static str>>>,
        class: Class,
        tag: &'static str,
    ) -> tokio::task::JoinHandle<()> {
        let lock = lock.clone();
        tokio::spawn(async move {
            let mut held = lock.lock(class).await.unwrap();
            held.push(tag);
        })
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn foreground_waiters_go_before_background_ones() {
        let lock = Arc::new(PriorityLock::with_max_defer(
            Vec::new(),
            Duration::from_secs(60),
        ));
        let first = lock.lock(Class::Foreground).await.unwrap();
        let tasks = vec![
            take(&lock, Class::Background, "bg1"),
            take(&lock, Class::Background, "bg2"),
            take(&lock, Class::Foreground, "fg1"),
            take(&lock, Class::Foreground, "fg2"),
        ];
        settle().await;
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        let order = lock.lock(Class::Foreground).await.unwrap().clone();
        assert_eq!(order, ["fg1", "fg2", "bg1", "bg2"]);
    }

    #[tokio::test]
    async fn a_background_waiter_is_not_put_off_forever() {
        let lock = Arc::new(PriorityLock::new(Vec::new()));
        let first = lock.lock(Class::Foreground).await.unwrap();
        let bg = take(&lock, Class::Background, "bg");
        settle().await;
        tokio::time::sleep(MAX_DEFER + Duration::from_millis(10)).await;
        let fg = take(&lock, Class::Foreground, "fg");
        settle().await;
        drop(first);
        bg.await.unwrap();
        fg.await.unwrap();
        let order = lock.lock(Class::Foreground).await.unwrap().clone();
        assert_eq!(order, ["bg", "fg"]);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_keep_the_lock() {
        let lock = Arc::new(PriorityLock::new(Vec::new()));
        let first = lock.lock(Class::Foreground).await.unwrap();
        let gave_up = {
            let lock = lock.clone();
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_millis(1), lock.lock(Class::Foreground))
                        .await;
            })
        };
        gave_up.await.unwrap();
        let later = take(&lock, Class::Background, "later");
        settle().await;
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), later)
            .await
            .expect("the turn passed on")
            .unwrap();
    }

    #[tokio::test]
    async fn a_turn_given_to_a_dropped_waiter_passes_on() {
        let lock = Arc::new(PriorityLock::new(Vec::<&'static str>::new()));
        let first = lock.lock(Class::Foreground).await.unwrap();
        // Queued, granted (by the release below), then dropped before it is polled again.
        let mut waiter = Box::pin(lock.lock(Class::Foreground));
        assert!(futures_poll_once(waiter.as_mut()).await.is_none());
        drop(first);
        drop(waiter);
        let again = tokio::time::timeout(Duration::from_secs(5), lock.lock(Class::Background))
            .await
            .expect("the lock is free again");
        assert!(again.is_ok());
    }

    #[tokio::test]
    async fn close_takes_the_value_and_refuses_everyone_after() {
        let lock = Arc::new(PriorityLock::new(vec!["x"]));
        let held = lock.lock(Class::Background).await.unwrap();
        let waiter = {
            let lock = lock.clone();
            tokio::spawn(async move { lock.lock(Class::Background).await.err() })
        };
        let closer = {
            let lock = lock.clone();
            tokio::spawn(async move { lock.close().await })
        };
        settle().await;
        drop(held);
        assert_eq!(closer.await.unwrap(), Some(vec!["x"]));
        assert!(lock.is_closed());
        assert_eq!(waiter.await.unwrap(), Some(LockError::Closed));
        assert!(lock.lock(Class::Foreground).await.is_err());
    }

    /// Polls a future once; `Some` if it finished.
    async fn futures_poll_once<F: std::future::Future>(
        mut fut: std::pin::Pin<&mut F>,
    ) -> Option<F::Output> {
        std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await
    }
}
