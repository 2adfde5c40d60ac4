//! A connection's view of its listener's shutdown token, cheap to poll from a loop that
//! runs on every wake-up: the token's future is polled (taking the locks every connection
//! of the listener shares) only on the first poll, when the task's waker changes, and
//! after the token woke it; every other poll reads one flag of the connection's own.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Resolves when the token is cancelled; see the module comment.
pub(crate) struct Shutdown<'a, 'p> {
    token: &'a CancellationToken,
    /// The token's future, pinned where the caller keeps its state (no allocation).
    wait: Pin<&'p mut WaitForCancellationFuture<'a>>,
    /// The waker the token's future holds: it flags the wake before passing it on. Set
    /// by the first poll.
    wake: Option<Arc<Flagged>>,
    done: bool,
}

/// A task's waker that remembers it was used. The token wakes it only when cancelled.
struct Flagged {
    woken: AtomicBool,
    task: Waker,
}

impl Wake for Flagged {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl<'a, 'p> Shutdown<'a, 'p> {
    /// Watches `token` through `wait`, its `cancelled()` future pinned by the caller.
    pub(crate) fn new(
        token: &'a CancellationToken,
        wait: Pin<&'p mut WaitForCancellationFuture<'a>>,
    ) -> Self {
        Self {
            token,
            wait,
            wake: None,
            done: false,
        }
    }

    /// True once the token is cancelled. After a first poll this reads the flag alone.
    pub(crate) fn is_cancelled(&self) -> bool {
        match &self.wake {
            _ if self.done => true,
            Some(w) => w.woken.load(Ordering::Acquire),
            None => self.token.is_cancelled(),
        }
    }
}

impl Future for Shutdown<'_, '_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(());
        }
        let wake = match this.wake.as_ref().filter(|w| w.task.will_wake(cx.waker())) {
            // Registered by this task: nothing to do unless the token woke it.
            Some(w) if !w.woken.swap(false, Ordering::AcqRel) => return Poll::Pending,
            Some(w) => w.clone(),
            // First poll, or another task: the token's future takes a waker for it.
            None => {
                let w = Arc::new(Flagged {
                    woken: AtomicBool::new(false),
                    task: cx.waker().clone(),
                });
                this.wake = Some(w.clone());
                w
            }
        };
        let waker = Waker::from(wake);
        let r = this.wait.as_mut().poll(&mut Context::from_waker(&waker));
        this.done = r.is_ready();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(s: &mut Shutdown<'_, '_>, waker: &Waker) -> Poll<()> {
        Pin::new(s).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn wakes_the_task_and_resolves_when_cancelled() {
        let token = CancellationToken::new();
        let child = token.child_token();
        let wait = std::pin::pin!(child.cancelled());
        let mut s = Shutdown::new(&child, wait);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        for _ in 0..3 {
            assert!(poll(&mut s, &waker).is_pending());
        }
        assert!(!s.is_cancelled());
        token.cancel();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the task is woken once");
        assert!(s.is_cancelled());
        assert!(poll(&mut s, &waker).is_ready());
        assert!(poll(&mut s, &waker).is_ready());
        assert!(s.is_cancelled());
    }

    #[test]
    fn a_new_waker_is_the_one_woken() {
        let token = CancellationToken::new();
        let wait = std::pin::pin!(token.cancelled());
        let mut s = Shutdown::new(&token, wait);
        let (first, second) = (
            Arc::new(Count(AtomicUsize::new(0))),
            Arc::new(Count(AtomicUsize::new(0))),
        );
        assert!(poll(&mut s, &Waker::from(first.clone())).is_pending());
        assert!(poll(&mut s, &Waker::from(second.clone())).is_pending());
        token.cancel();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert!(poll(&mut s, &Waker::from(second)).is_ready());
    }

    #[test]
    fn a_token_cancelled_before_the_first_poll_is_seen() {
        let token = CancellationToken::new();
        token.cancel();
        let wait = std::pin::pin!(token.cancelled());
        let mut s = Shutdown::new(&token, wait);
        assert!(s.is_cancelled());
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        assert!(poll(&mut s, &waker).is_ready());
    }
}
