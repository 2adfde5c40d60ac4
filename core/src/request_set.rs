//! The requests a connection is handling: futures polled by the connection's task, each
//! only when it was woken.
//!
//! A general set of futures (`FuturesUnordered`) wakes the task that polls it again
//! whenever it polled every future it holds and none was ready, so that a set with one
//! future cannot keep its task from yielding. For a connection that is the usual case (a
//! request just read, polled once to send it upstream), and it costs a second run of the
//! connection's task for every request. This set never wakes its own task: it polls the
//! futures woken before the call, each once, and those woken while it polls are left
//! for the next call, which their wakers have already scheduled. It also keeps a waker
//! per slot and reuses both for the next request, so a request costs no allocation of
//! the set's own.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Slots a set keeps while it holds nothing (about 90 bytes each, with their wakers); the
/// rest are given back. As many as a client that pipelines usually keeps in flight, so
/// that the pauses between its bursts do not free and allocate them again.
const IDLE_SLOTS: usize = 32;

/// The futures woken since the set last looked, and the task that polls the set.
#[derive(Default)]
struct Woken {
    slots: Mutex<Vec<usize>>,
    task: AtomicWaker,
}

/// The waker of one slot: queues the slot once until the set polls it.
struct SlotWaker {
    index: usize,
    queued: AtomicBool,
    woken: Arc<Woken>,
}

impl SlotWaker {
    /// Queues the slot.
    fn enqueue(&self) {
        self.woken
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.index);
    }
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Once until the set polls the slot.
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.enqueue();
            self.woken.task.wake();
        }
    }
}

struct Slot<F> {
    future: Option<F>,
    flag: Arc<SlotWaker>,
    waker: Waker,
}

/// A set of futures, each polled by [`RequestSet::poll_next`] only when woken.
pub(crate) struct RequestSet<F> {
    slots: Vec<Slot<F>>,
    /// Indices of empty slots.
    free: Vec<usize>,
    len: usize,
    woken: Arc<Woken>,
    /// Woken slots taken from `woken`, polled from `cursor` on.
    taken: Vec<usize>,
    cursor: usize,
}

impl<F> Default for RequestSet<F> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
            woken: Arc::default(),
            taken: Vec::new(),
            cursor: 0,
        }
    }
}

impl<F: Future + Unpin> RequestSet<F> {
    /// Futures in the set that have not finished.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `future`; the next [`RequestSet::poll_next`] polls it.
    pub(crate) fn push(&mut self, future: F) {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let index = self.slots.len();
                let flag = Arc::new(SlotWaker {
                    index,
                    queued: AtomicBool::new(false),
                    woken: self.woken.clone(),
                });
                let waker = Waker::from(flag.clone());
                self.slots.push(Slot {
                    future: None,
                    flag,
                    waker,
                });
                index
            }
        };
        let slot = &mut self.slots[index];
        slot.future = Some(future);
        // Queued even when a wake left over from the slot's last future says it is
        // (that entry may already have been taken). The caller polls the set next: its
        // task needs no wake.
        slot.flag.queued.store(true, Ordering::Release);
        slot.flag.enqueue();
        self.len += 1;
    }

    /// Polls the futures woken since the last call, each once, until one finishes:
    /// `Ready(Some)` with its output (a later call polls the rest), `Ready(None)` when
    /// the set is empty, `Pending` when none of them finished (a future woken from now
    /// on wakes the calling task).
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        if self.len == 0 {
            return Poll::Ready(None);
        }
        self.woken.task.register(cx.waker());
        let mut took = false;
        loop {
            if self.cursor == self.taken.len() {
                // Taken once per call: a future that wakes itself as it is polled is
                // polled again by the next call, not again by this one.
                if took {
                    return Poll::Pending;
                }
                took = true;
                self.taken.clear();
                self.cursor = 0;
                std::mem::swap(
                    &mut *self
                        .woken
                        .slots
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner),
                    &mut self.taken,
                );
                if self.taken.is_empty() {
                    return Poll::Pending;
                }
            }
            let index = self.taken[self.cursor];
            self.cursor += 1;
            // A slot given back while its waker was queued is gone.
            let Some(slot) = self.slots.get_mut(index) else {
                continue;
            };
            slot.flag.queued.store(false, Ordering::Release);
            // A wake left over from a finished future finds its slot empty.
            let Some(future) = slot.future.as_mut() else {
                continue;
            };
            if let Poll::Ready(output) =
                Pin::new(future).poll(&mut Context::from_waker(&slot.waker))
            {
                slot.future = None;
                self.free.push(index);
                self.len -= 1;
                return Poll::Ready(Some(output));
            }
        }
    }

    /// Gives back the room of an empty set beyond a few slots (an idle connection keeps
    /// little).
    pub(crate) fn shrink(&mut self) {
        if self.len == 0 && self.slots.len() > IDLE_SLOTS {
            self.slots.truncate(IDLE_SLOTS);
            self.free.clear();
            self.free.extend((0..IDLE_SLOTS).rev());
            self.free.shrink_to_fit();
            self.slots.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A future that finishes once `open` is set, counting its polls.
    struct Gate {
        open: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
        polls: Arc<AtomicUsize>,
        value: u32,
    }

    impl Future for Gate {
        type Output = u32;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.open.load(Ordering::Acquire) {
                return Poll::Ready(self.value);
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    struct Handle {
        open: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
        polls: Arc<AtomicUsize>,
    }

    impl Handle {
        fn release(&self) {
            self.open.store(true, Ordering::Release);
            if let Some(w) = self.waker.lock().unwrap().as_ref() {
                w.wake_by_ref();
            }
        }
        /// Wakes the future's last waker again, as a waker kept past its future's end
        /// would.
        fn wake_again(&self) {
            if let Some(w) = self.waker.lock().unwrap().as_ref() {
                w.wake_by_ref();
            }
        }
        fn polls(&self) -> usize {
            self.polls.load(Ordering::Relaxed)
        }
    }

    fn gate(value: u32) -> (Gate, Handle) {
        let (open, waker, polls) = (Arc::default(), Arc::default(), Arc::default());
        let h = Handle {
            open: Arc::clone(&open),
            waker: Arc::clone(&waker),
            polls: Arc::clone(&polls),
        };
        (
            Gate {
                open,
                waker,
                polls,
                value,
            },
            h,
        )
    }

    /// The outputs `set` has ready now, sorted.
    fn drain(set: &mut RequestSet<Gate>, cx: &mut Context<'_>) -> Vec<u32> {
        let mut got = Vec::new();
        while let Poll::Ready(Some(v)) = set.poll_next(cx) {
            got.push(v);
        }
        got.sort_unstable();
        got
    }

    /// Counts the wakes of the task polling the set.
    #[derive(Default)]
    struct TaskWakes(AtomicUsize);
    impl Wake for TaskWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_pending_request_does_not_wake_its_task_and_is_polled_only_when_woken() {
        let wakes = Arc::new(TaskWakes::default());
        let task = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&task);
        let mut set = RequestSet::default();
        assert_eq!(set.poll_next(&mut cx), Poll::Ready(None));

        let (a, ha) = gate(1);
        set.push(a);
        assert_eq!(set.len(), 1);
        assert_eq!(set.poll_next(&mut cx), Poll::Pending);
        assert_eq!(ha.polls(), 1);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 0, "no wake of its own");
        // Not woken: not polled again.
        assert_eq!(set.poll_next(&mut cx), Poll::Pending);
        assert_eq!(ha.polls(), 1);

        ha.release();
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        assert_eq!(set.poll_next(&mut cx), Poll::Ready(Some(1)));
        assert_eq!(ha.polls(), 2);
        assert!(set.is_empty());
        assert_eq!(set.poll_next(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn several_ready_answers_come_one_per_call_and_slots_are_reused() {
        let wakes = Arc::new(TaskWakes::default());
        let task = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&task);
        let mut set = RequestSet::default();
        let mut handles = Vec::new();
        for v in 0..10 {
            let (g, h) = gate(v);
            set.push(g);
            handles.push(h);
        }
        assert_eq!(set.poll_next(&mut cx), Poll::Pending);
        for h in handles.iter().skip(3).step_by(2) {
            h.release();
        }
        let got = drain(&mut set, &mut cx);
        assert_eq!(got, vec![3, 5, 7, 9]);
        assert_eq!(set.len(), 6);
        // Each was polled when pushed, and those woken once more.
        for (v, h) in handles.iter().enumerate() {
            let woken = v >= 3 && v % 2 == 1;
            assert_eq!(h.polls(), 1 + usize::from(woken), "request {v}");
        }

        // New requests take the freed slots.
        let slots = set.slots.len();
        for v in 100..104 {
            let (g, h) = gate(v);
            h.release();
            set.push(g);
        }
        assert_eq!(set.slots.len(), slots);
        let got = drain(&mut set, &mut cx);
        assert_eq!(got, vec![100, 101, 102, 103]);

        for h in &handles {
            h.release();
        }
        let n = drain(&mut set, &mut cx).len();
        assert_eq!(n, 6);
        assert!(set.is_empty());
    }

    #[test]
    fn an_empty_set_gives_back_slots_beyond_a_few_and_carries_on() {
        let task = Waker::from(Arc::new(TaskWakes::default()));
        let mut cx = Context::from_waker(&task);
        let mut set = RequestSet::default();
        let mut handles = Vec::new();
        for v in 0..IDLE_SLOTS as u32 + 8 {
            let (g, h) = gate(v);
            set.push(g);
            handles.push(h);
        }
        assert_eq!(set.poll_next(&mut cx), Poll::Pending);
        set.shrink();
        assert_eq!(
            set.slots.len(),
            IDLE_SLOTS + 8,
            "not while it holds requests"
        );
        for h in &handles {
            h.release();
        }
        let n = drain(&mut set, &mut cx).len();
        assert_eq!(n, IDLE_SLOTS + 8);
        // Wakes left over from finished futures, of slots about to be given back and of
        // slots kept, are queued.
        for h in &handles {
            h.wake_again();
        }
        set.shrink();
        assert_eq!(set.slots.len(), IDLE_SLOTS);
        for v in 0..IDLE_SLOTS as u32 + 2 {
            let (g, h) = gate(1000 + v);
            set.push(g);
            h.release();
        }
        let got = drain(&mut set, &mut cx);
        assert_eq!(
            got,
            (1000..1000 + IDLE_SLOTS as u32 + 2).collect::<Vec<_>>()
        );
    }

    /// A future that wakes itself every time it is polled.
    struct Spinner(Arc<AtomicUsize>);
    impl Future for Spinner {
        type Output = u32;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            self.0.fetch_add(1, Ordering::Relaxed);
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[test]
    fn a_future_that_wakes_itself_is_polled_once_per_call_and_the_task_is_woken() {
        let wakes = Arc::new(TaskWakes::default());
        let task = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&task);
        let mut set = RequestSet::default();
        let polls = Arc::new(AtomicUsize::new(0));
        set.push(Spinner(polls.clone()));
        assert_eq!(set.poll_next(&mut cx), Poll::Pending);
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            1,
            "its wake reaches the task"
        );
        assert_eq!(set.poll_next(&mut cx), Poll::Pending);
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn futures_woken_from_other_threads_all_finish() {
        let mut set = RequestSet::default();
        let mut txs = Vec::new();
        for i in 0..200u32 {
            let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
            txs.push(tx);
            set.push(Box::pin(async move { rx.await.unwrap_or(u32::MAX) + i }));
        }
        let sender = std::thread::spawn(move || {
            for (i, tx) in txs.into_iter().enumerate() {
                let _ = tx.send(i as u32);
            }
        });
        let mut sum = 0u64;
        while let Some(v) = std::future::poll_fn(|cx| set.poll_next(cx)).await {
            sum += u64::from(v);
        }
        sender.join().unwrap();
        assert_eq!(sum, (0..200u64).map(|i| 2 * i).sum::<u64>());
    }
}
