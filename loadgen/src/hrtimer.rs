//! Sub-millisecond sleeps for the open-loop schedule.
//!
//! monoio's timer wheel rounds every sleep up to the next millisecond.
//! An open-loop producer counts latency from each message's intended send
//! time, so that rounding would be charged to the broker: at 50k msg/s a
//! message waits half a millisecond on average before it is even sent.
//!
//! [`Timer`] is a producer's own timerfd, read through the runtime's
//! io_uring: the thread sleeps in the kernel until the deadline. Where a
//! timerfd cannot be read that way (monoio's epoll driver), sleeps fall
//! back to [`sleep_until`]: one helper thread keeps a heap of deadlines
//! and sleeps on a condition variable (a futex with an hrtimer behind it:
//! tens of µs of slack), then wakes the waiting task across threads
//! (monoio's `sync` feature turns that wake into an eventfd write).

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Deadlines this close are treated as reached: waking costs more.
const SPIN_FREE: Duration = Duration::from_micros(10);

/// Most deadlines waited on at once (one per waiting producer; a bound,
/// not a working size).
const MAX_WAITING: usize = 65_536;

struct Entry {
    at: Instant,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.at.cmp(&o.at)
    }
}

struct Shared {
    heap: Mutex<BinaryHeap<Reverse<Entry>>>,
    changed: Condvar,
}

/// The process's timer thread, started on first use; `None` if no thread
/// could be started.
fn shared() -> Option<&'static Arc<Shared>> {
    static SHARED: OnceLock<Option<Arc<Shared>>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let s = Arc::new(Shared {
                heap: Mutex::new(BinaryHeap::new()),
                changed: Condvar::new(),
            });
            let t = s.clone();
            let spawned = std::thread::Builder::new()
                .name("loadgen-timer".into())
                .spawn(move || run(&t));
            match spawned {
                Ok(_) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "no timer thread: pacing at 1 ms resolution");
                    None
                }
            }
        })
        .as_ref()
}

fn run(s: &Shared) {
    let mut heap = s.heap.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let now = Instant::now();
        while heap
            .peek()
            .is_some_and(|Reverse(e)| e.at <= now + SPIN_FREE)
        {
            if let Some(Reverse(e)) = heap.pop() {
                e.waker.wake();
            }
        }
        heap = match heap.peek() {
            None => s.changed.wait(heap).unwrap_or_else(|p| p.into_inner()),
            Some(Reverse(e)) => {
                let wait = e.at.saturating_duration_since(now);
                s.changed
                    .wait_timeout(heap, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
    }
}

/// One task's own sub-millisecond timer: a timerfd read through the
/// runtime's io_uring. The runtime thread sleeps in the kernel until the
/// deadline and wakes straight into the task, with no helper thread to be
/// scheduled first (on a busy host that hop cost a run-queue wait of its
/// own before every pacing wake-up). Falls back to the shared timer thread
/// where the runtime cannot read a timerfd (the epoll driver).
pub(crate) struct Timer {
    fd: Option<(rustix::fd::OwnedFd, monoio::fs::File)>,
    broken: Cell<bool>,
    buf: Cell<Option<Vec<u8>>>,
}

impl std::fmt::Debug for Timer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timer")
            .field("timerfd", &(self.fd.is_some() && !self.broken.get()))
            .finish()
    }
}

impl Timer {
    pub(crate) fn new() -> Self {
        use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
        // Blocking on purpose: io_uring polls a blocking fd, but completes
        // a read of an O_NONBLOCK one at once with EAGAIN.
        let fd = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::CLOEXEC)
            .map_err(std::io::Error::from)
            .and_then(|fd| {
                let read_side = fd.try_clone()?;
                let file = monoio::fs::File::from_std(std::fs::File::from(read_side))?;
                Ok((fd, file))
            });
        let fd = match fd {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::debug!(error = %e, "no timerfd: pacing through the timer thread");
                None
            }
        };
        Self {
            fd,
            broken: Cell::new(false),
            buf: Cell::new(Some(vec![0; 8])),
        }
    }

    /// Completes at `at`, give or take the kernel's timer slack.
    pub(crate) async fn sleep_until(&self, at: Instant) {
        if let Some((fd, file)) = self.fd.as_ref().filter(|_| !self.broken.get()) {
            match self.read_timer(fd, file, at).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "timerfd read failed: pacing through the timer thread");
                    self.broken.set(true);
                }
            }
        }
        sleep_until(at).await;
    }

    async fn read_timer(
        &self,
        fd: &rustix::fd::OwnedFd,
        file: &monoio::fs::File,
        at: Instant,
    ) -> std::io::Result<()> {
        use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
        let left = at.saturating_duration_since(Instant::now());
        if left <= SPIN_FREE {
            return Ok(());
        }
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let value = Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        timerfd_settime(
            fd,
            TimerfdTimerFlags::empty(),
            &Itimerspec {
                it_interval: zero,
                it_value: value,
            },
        )?;
        let buf = self.buf.take().unwrap_or_else(|| vec![0; 8]);
        // Offset -1: "the file's own position", the only kind of read a
        // timerfd takes (a positioned read of one is ESPIPE).
        let (res, buf) = file.read_at(buf, u64::MAX).await;
        self.buf.set(Some(buf));
        match res? {
            8 => Ok(()),
            n => Err(std::io::Error::other(format!("timerfd read {n} bytes"))),
        }
    }
}

/// Completes at `at`, give or take the timer thread's wake-up latency.
pub(crate) async fn sleep_until(at: Instant) {
    match shared() {
        Some(s) => {
            SleepUntil {
                s,
                at,
                armed: false,
            }
            .await
        }
        None => monoio::time::sleep(at.saturating_duration_since(Instant::now())).await,
    }
}

struct SleepUntil {
    s: &'static Shared,
    at: Instant,
    armed: bool,
}

impl Future for SleepUntil {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() + SPIN_FREE >= self.at {
            return Poll::Ready(());
        }
        if self.armed {
            // Woken early by someone else: the entry is still queued.
            return Poll::Pending;
        }
        let s = self.s;
        let mut heap = s.heap.lock().unwrap_or_else(|p| p.into_inner());
        if heap.len() >= MAX_WAITING {
            return Poll::Ready(());
        }
        let earliest = heap.peek().is_none_or(|Reverse(e)| self.at < e.at);
        heap.push(Reverse(Entry {
            at: self.at,
            waker: cx.waker().clone(),
        }));
        drop(heap);
        if earliest {
            s.changed.notify_one();
        }
        self.armed = true;
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_end_in_order_and_not_before_their_deadline() {
        let mut rt = ringmq_client::runtime().expect("runtime");
        rt.block_on(async {
            // Deadlines 50 ms out: every task is polled (and its deadline
            // queued) before the first one falls due, even when this
            // thread is descheduled for a while; otherwise a late first
            // poll finds its deadline passed and finishes out of order.
            let start = Instant::now() + Duration::from_millis(50);
            let order = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            for (i, us) in [900u64, 300, 600].into_iter().enumerate() {
                let order = order.clone();
                tasks.push(monoio::spawn(async move {
                    let at = start + Duration::from_micros(us);
                    sleep_until(at).await;
                    assert!(Instant::now() + SPIN_FREE >= at);
                    order.borrow_mut().push(i);
                }));
            }
            for t in tasks {
                t.await;
            }
            assert_eq!(*order.borrow(), vec![1, 2, 0]);
        });
    }

    #[test]
    fn a_timer_sleeps_through_its_timerfd_until_each_deadline() {
        let mut rt = ringmq_client::runtime().expect("runtime");
        rt.block_on(async {
            let timer = Timer::new();
            for us in [200u64, 1_500, 50, 3_000] {
                let at = Instant::now() + Duration::from_micros(us);
                timer.sleep_until(at).await;
                assert!(Instant::now() + SPIN_FREE >= at, "woke before {us} µs");
            }
            // A deadline already past returns at once.
            timer.sleep_until(Instant::now()).await;
            // These machines run io_uring: the timerfd served every sleep,
            // with no fallback to the helper thread.
            if monoio::utils::detect_uring() {
                assert!(timer.fd.is_some() && !timer.broken.get(), "{timer:?}");
            }
        });
    }
}
