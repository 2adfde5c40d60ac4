//! Worker threads. Each runs a single-threaded runtime and owns the connections handed
//! to it: a downstream connection, the requests read from it and the upstream
//! connections they are sent on all live on one thread, so a request never waits for
//! another thread to be woken, and nothing on its path is contended. Listeners accept on
//! the proxy's own runtime and hand each connection to the next worker in turn.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

thread_local! {
    /// The index of the worker running on this thread.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
    /// The share of per-worker metrics this thread writes (0: not a worker).
    static SHARE: Cell<usize> = const { Cell::new(0) };
    /// Set while a connection starts several requests at once.
    static STARTING_SEVERAL: Cell<bool> = const { Cell::new(false) };
}

/// True while the calling task starts several requests at once (those read together):
/// their upstream writes are better left to each connection's writer, which sends what
/// they queued in one write once they all have.
pub(crate) fn starting_several() -> bool {
    STARTING_SEVERAL.with(Cell::get)
}

/// Runs `f`, in which the calling task starts several requests at once when `several`.
pub(crate) fn starting<R>(several: bool, f: impl FnOnce() -> R) -> R {
    STARTING_SEVERAL.with(|c| {
        let was = c.replace(several);
        let r = f();
        c.set(was);
        r
    })
}

/// The index of the worker this thread runs, if it is one.
pub(crate) fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

/// How many groups of upstream connections an endpoint keeps: one per CPU, so each
/// worker has connections of its own when the workers are as many as the CPUs (the
/// default). Workers beyond that share a group.
pub(crate) fn connection_groups() -> usize {
    static GROUPS: OnceLock<usize> = OnceLock::new();
    *GROUPS.get_or_init(default_concurrency)
}

/// The group of upstream connections the calling thread uses.
pub(crate) fn connection_group() -> usize {
    current().map_or(0, |w| w % connection_groups())
}

/// How many shares a per-worker metric keeps: one per connection group (so each worker
/// of a default proxy writes its own), and one for every other thread.
pub(crate) fn stats_shares() -> usize {
    connection_groups() + 1
}

/// The share of a per-worker metric the calling thread writes.
#[inline]
pub(crate) fn stats_share() -> usize {
    SHARE.with(Cell::get)
}

/// Workers a proxy runs when not told: one per CPU the process may use.
pub fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How far ahead a worker's timer always has a deadline.
const TIMER_HORIZON: Duration = Duration::from_secs(1);

/// The worker threads of one proxy. They stop when this is dropped; tasks still on them
/// are dropped with their runtime.
pub(crate) struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `count` workers (at least one).
    pub(crate) fn start(count: usize) -> std::io::Result<Self> {
        // Built first, so that the workers already started stop if a later one fails.
        let mut workers = Self {
            handles: Vec::new(),
            next: AtomicUsize::new(0),
            stop: CancellationToken::new(),
        };
        for index in 0..count.max(1) {
            // Sockets and timers only: a worker waits on no signal or child process, and
            // every turn of its event loop would otherwise also look at both.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()?;
            let handle = runtime.handle().clone();
            let stop = workers.stop.clone();
            std::thread::Builder::new()
                .name(format!("metamesh-worker-{index}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(Some(index)));
                    SHARE.with(|c| c.set(1 + index % connection_groups()));
                    runtime.block_on(keep_timer_near(stop));
                })?;
            workers.handles.push(handle);
        }
        Ok(workers)
    }

    /// Runs `task` on the next worker in turn, tracked by `tracker`.
    pub(crate) fn spawn<F>(&self, tracker: &TaskTracker, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        tracker.spawn_on(task, &self.handles[i]);
    }

    /// Hands an accepted connection to the next worker, which registers it with its own
    /// event loop and runs `serve` on it.
    pub(crate) fn hand_off<F, Fut>(&self, tracker: &TaskTracker, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let std_stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand a connection to a worker; closed");
                return;
            }
        };
        self.spawn(tracker, async move {
            match TcpStream::from_std(std_stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => {
                    tracing::warn!(error = %e, "a worker cannot register a connection; closed")
                }
            }
        });
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Runs until `stop`, keeping a deadline at most [`TIMER_HORIZON`] ahead in the worker's
/// timer. The timer wakes a parked thread (a write to its event fd, and one more poll)
/// whenever a new deadline is earlier than every pending one; without a nearer deadline
/// the timeout each request arms would cost that on every request that finds its
/// connection idle. One tick a second costs far less.
async fn keep_timer_near(stop: CancellationToken) {
    let mut tick = tokio::time::interval(TIMER_HORIZON);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_are_served_by_the_workers_in_turn() {
        let workers = Workers::start(2).unwrap();
        let tracker = TaskTracker::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let _client = TcpStream::connect(addr).await.unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            workers.hand_off(&tracker, stream, move |s| async move {
                let _ = tx.send((current(), s.peer_addr().is_ok()));
            });
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(rx.recv().await.unwrap());
        }
        seen.sort();
        assert_eq!(
            seen,
            vec![
                (Some(0), true),
                (Some(0), true),
                (Some(1), true),
                (Some(1), true)
            ]
        );
        assert_eq!(current(), None);
    }

    #[test]
    fn workers_stop_when_dropped() {
        let workers = Workers::start(1).unwrap();
        let tracker = TaskTracker::new();
        let (tx, rx) = std::sync::mpsc::channel();
        // The task outlives nothing: it waits forever, and is dropped with the runtime.
        struct Dropped(std::sync::mpsc::Sender<()>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let guard = Dropped(tx);
        workers.spawn(&tracker, async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        drop(workers);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the worker's task is dropped when the workers stop");
    }
}
