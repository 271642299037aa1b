//! The acknowledgement of one append: the flusher (or whoever fails the
//! store's waiters) completes it, the append awaits it. Both ends live on
//! the shard's one thread, so it is an `Rc` slot: no atomics and no lock,
//! where `futures`' oneshot channel pays several atomic operations on each
//! side and an `Arc`, for every append.

use super::StoreError;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// What an append learns: `Ok(())` once its bytes are acknowledged, or why
/// they never will be.
pub(crate) type AckResult = Result<(), StoreError>;

#[derive(Debug, Default)]
struct Slot {
    result: Option<AckResult>,
    waker: Option<Waker>,
    /// The sender is gone; with no result, the append was dropped unanswered.
    closed: bool,
}

/// The flusher's end: completes the append once.
#[derive(Debug)]
pub(crate) struct AckSender(Rc<RefCell<Slot>>);

/// The append's end: a future of its result, or `None` if the sender was
/// dropped without one.
#[derive(Debug)]
pub(crate) struct AckReceiver(Rc<RefCell<Slot>>);

/// A new acknowledgement.
pub(crate) fn ack_channel() -> (AckSender, AckReceiver) {
    let slot = Rc::new(RefCell::new(Slot::default()));
    (AckSender(slot.clone()), AckReceiver(slot))
}

impl AckSender {
    /// Completes the append with `result`; dropping `self` wakes it.
    pub(crate) fn send(self, result: AckResult) {
        self.0.borrow_mut().result = Some(result);
    }
}

impl Drop for AckSender {
    /// Wakes the append, once, whether a result was sent or not: the
    /// receiver tells the two apart by the result.
    fn drop(&mut self) {
        let waker = {
            let mut slot = self.0.borrow_mut();
            slot.closed = true;
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Future for AckReceiver {
    type Output = Option<AckResult>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.0.borrow_mut();
        if let Some(result) = slot.result.take() {
            return Poll::Ready(Some(result));
        }
        if slot.closed {
            return Poll::Ready(None);
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn delivers_the_result_sent_before_or_after_the_first_poll() {
        let (tx, rx) = ack_channel();
        tx.send(Ok(()));
        assert!(matches!(rx.now_or_never(), Some(Some(Ok(())))));

        let (tx, mut rx) = ack_channel();
        assert!((&mut rx).now_or_never().is_none(), "nothing sent yet");
        tx.send(Err(StoreError::Closed));
        assert!(matches!(
            rx.now_or_never(),
            Some(Some(Err(StoreError::Closed)))
        ));
    }

    #[test]
    fn a_dropped_sender_ends_the_wait_without_a_result() {
        let (tx, mut rx) = ack_channel();
        assert!((&mut rx).now_or_never().is_none());
        drop(tx);
        assert!(matches!(rx.now_or_never(), Some(None)));
    }

    #[test]
    fn wakes_the_waiting_task_once_completed() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        for send in [true, false] {
            let count = Arc::new(Count(AtomicUsize::new(0)));
            let waker = Waker::from(count.clone());
            let mut cx = Context::from_waker(&waker);
            let (tx, mut rx) = ack_channel();
            assert!(Pin::new(&mut rx).poll(&mut cx).is_pending());
            if send {
                tx.send(Ok(()));
            } else {
                drop(tx);
            }
            assert_eq!(
                count.0.load(Ordering::Relaxed),
                1,
                "woken once (send: {send})"
            );
            assert!(Pin::new(&mut rx).poll(&mut cx).is_ready());
        }
    }
}
