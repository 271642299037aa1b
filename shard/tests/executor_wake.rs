//! Guards the patched glommio (third_party/glommio): an executor about to
//! sleep must never miss a message another executor sends it at that moment.
//!
//! Upstream glommio ordered "I am going to sleep" against a sender's "I
//! queued something" with a process-wide membarrier; our copy uses a pair of
//! `SeqCst` fences instead. A missed wake leaves the receiver asleep with a
//! message queued, and this ping-pong stalls until the watchdog fails it.
//! Each side pauses for a moment every few round trips so the other one is
//! often just going to sleep when the next message lands.
//!
//! What this can and cannot show: it fails if the sleep/wake path loses
//! wake-ups at any useful rate (a wrong flag, a check skipped, a notify
//! that never writes the eventfd). The store-load reordering the fences
//! exist for is a window of a few nanoseconds on x86; a test this short
//! does not catch a missing fence (tried: 3 runs without it passed). The
//! argument for the fences is in third_party/README.md.

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROUND_TRIPS: u64 = 20_000;

/// Counts its executor as finished however its future ends, a panic
/// included, so the watchdog stops waiting and `join` reports the panic
/// instead of a stall that did not happen.
struct Finished(Arc<AtomicU64>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn executors_never_sleep_through_a_message() {
    let mesh = MeshBuilder::<u64, _>::full(2, 1);
    let progress = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for side in 0..2u64 {
        let mesh = mesh.clone();
        let progress = progress.clone();
        let finished = finished.clone();
        let handle = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("wake-{side}"))
            .spawn(move || async move {
                let _finished = Finished(finished);
                let (senders, mut receivers) = mesh.join().await.expect("join the mesh");
                let me = senders.peer_id();
                let peer = 1 - me;
                let (_, rx) = receivers
                    .streams()
                    .into_iter()
                    .find(|(from, _)| *from == peer)
                    .expect("a receiver from the peer");
                if me == 0 {
                    senders.send_to(peer, 0).await.expect("first ping");
                }
                while let Some(n) = rx.recv().await {
                    progress.store(n, Ordering::Relaxed);
                    if n >= ROUND_TRIPS {
                        if me == 0 {
                            // Let the other side see the end too.
                            let _ = senders.send_to(peer, n + 1).await;
                        }
                        break;
                    }
                    if n % 64 == 0 {
                        // A short idle gap: this side goes to sleep and the
                        // other one may be just about to, too.
                        glommio::timer::sleep(Duration::from_micros(50)).await;
                    }
                    senders.send_to(peer, n + 1).await.expect("pong");
                }
            })
            .expect("spawn executor");
        handles.push(handle);
    }

    // Watchdog: progress must keep moving; a missed wake stops it for good.
    let mut last = (0, Instant::now());
    while finished.load(Ordering::Relaxed) < 2 {
        std::thread::sleep(Duration::from_millis(50));
        let now = progress.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10) {
            panic!("no message for 10 s at round trip {now} of {ROUND_TRIPS}: an executor slept through a wake-up");
        }
    }
    for h in handles {
        h.join().expect("executor result");
    }
    assert!(progress.load(Ordering::Relaxed) >= ROUND_TRIPS);
}
