//! Measurement: message payloads that carry their own identity and send
//! time, HdrHistograms of publish and end-to-end latency (merged across
//! producers and consumers, never averaged), per-second series, and the
//! live checks of `--verify`.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;

const MAGIC: u32 = 0x524d_4c47; // "RMLG"

/// Payloads cut from shared blocks: the producer copies each body into its
/// batch, so a payload lives only until its batch is built or sent, and an
/// allocation and a free per message (about a tenth of the producer
/// thread's CPU at 670k msg/s of 100 B, with the per-message callback)
/// become one per block. A block is freed once its last payload is.
#[derive(Debug, Default)]
pub struct PayloadArena {
    block: bytes::BytesMut,
}

/// Bytes of one arena block (payloads bigger than this get their own).
const ARENA_BLOCK_BYTES: usize = 64 << 10;

impl PayloadArena {
    /// `len` filler bytes with `stamp` written over their start.
    fn carve(&mut self, len: usize, stamp: impl FnOnce(&mut [u8])) -> bytes::Bytes {
        if self.block.capacity() < len {
            self.block = bytes::BytesMut::with_capacity(ARENA_BLOCK_BYTES.max(len));
        }
        self.block.resize(len, b'x');
        stamp(&mut self.block[..]);
        self.block.split_to(len).freeze()
    }
}

/// What every message carries at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub producer: u32,
    pub seq: u64,
    /// Intended send time, µs since the run's epoch.
    pub sent_us: u64,
}

impl Stamp {
    /// A payload of `size` bytes starting with the stamp.
    pub fn payload(&self, size: usize) -> Vec<u8> {
        let mut v = vec![b'x'; size.max(24)];
        self.write(&mut v);
        v
    }

    /// Writes the stamp over the first 24 bytes of `b`.
    fn write(&self, b: &mut [u8]) {
        b[..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.producer.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.sent_us.to_le_bytes());
    }

    /// The same payload as [`Stamp::payload`], carved out of `arena`.
    pub fn payload_in(&self, size: usize, arena: &mut PayloadArena) -> bytes::Bytes {
        arena.carve(size.max(24), |b| self.write(b))
    }

    /// Reads a payload's stamp.
    pub fn read(b: &[u8]) -> Option<Self> {
        let word = |r: std::ops::Range<usize>| {
            b.get(r)
                .map(|s| s.iter().rev().fold(0u64, |a, &x| a << 8 | u64::from(x)))
        };
        if word(0..4)? != u64::from(MAGIC) {
            return None;
        }
        Some(Self {
            producer: word(4..8)? as u32,
            seq: word(8..16)?,
            sent_us: word(16..24)?,
        })
    }
}

/// Largest latency a histogram holds: an hour, in µs.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A latency histogram in µs, 1 µs to an hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap_or_else(|_| unreachable!())
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub t: u64,
    pub sent: u64,
    pub received: u64,
    pub backlog: u64,
    pub publish_p50_us: u64,
    pub publish_p99_us: u64,
    pub e2e_p99_us: u64,
}

/// What one thread measured. A run keeps one for its producers and one
/// for its consumers (on their own thread, sharing the epoch); histograms
/// and counts are merged, never percentiles averaged.
#[derive(Debug)]
pub struct Recorder {
    pub epoch: Instant,
    /// Whether samples count (false during warm-up).
    pub measuring: bool,
    pub publish: Histogram<u64>,
    pub e2e: Histogram<u64>,
    pub interval_publish: Histogram<u64>,
    pub interval_e2e: Histogram<u64>,
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub received: u64,
    pub measured_sent: u64,
    pub measured_received: u64,
    pub bytes_sent: u64,
    pub series: Vec<Second>,
    pub verify: Option<Verifier>,
    /// Publish latency while a backlog drains (`--backlog`): from the
    /// consumers' start to the second the backlog is gone.
    pub draining: Option<Histogram<u64>>,
    /// Publish latency after the backlog drained, in the same run: the
    /// same rate with no backlog, on the same disk at nearly the same time.
    /// Once it exists it takes the samples instead of `draining`.
    pub drained: Option<Histogram<u64>>,
}

impl Recorder {
    pub fn new(verify: bool) -> Self {
        Self::with_epoch(verify, Instant::now())
    }

    /// A recorder whose times count from `epoch` (shared by the threads
    /// of one run, so send stamps mean the same everywhere).
    pub fn with_epoch(verify: bool, epoch: Instant) -> Self {
        Self {
            epoch,
            measuring: false,
            publish: histogram(),
            e2e: histogram(),
            interval_publish: histogram(),
            interval_e2e: histogram(),
            sent: 0,
            acked: 0,
            failed: 0,
            received: 0,
            measured_sent: 0,
            measured_received: 0,
            bytes_sent: 0,
            series: Vec::new(),
            verify: verify.then(Verifier::default),
            draining: None,
            drained: None,
        }
    }

    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    pub fn on_ack(&mut self, stamp: Stamp, size: usize) {
        let now_us = self.now_us();
        self.on_ack_at_us(stamp, size, now_us);
    }

    /// [`Recorder::on_ack`] with the acknowledgement's time already read:
    /// the client reads the clock once per acknowledged batch, not once
    /// per message.
    pub fn on_ack_at(&mut self, stamp: Stamp, size: usize, acked_at: std::time::Instant) {
        let at_us = acked_at.saturating_duration_since(self.epoch).as_micros() as u64;
        self.on_ack_at_us(stamp, size, at_us);
    }

    fn on_ack_at_us(&mut self, stamp: Stamp, size: usize, at_us: u64) {
        let lat = at_us.saturating_sub(stamp.sent_us).clamp(1, MAX_LATENCY_US);
        self.acked += 1;
        if let Some(v) = self.verify.as_mut() {
            set_bit(v.acked.entry(stamp.producer).or_default(), stamp.seq);
        }
        let _ = self.interval_publish.record(lat);
        if self.measuring {
            let _ = self.publish.record(lat);
            self.measured_sent += 1;
            self.bytes_sent += size as u64;
        }
    }

    pub fn on_receive(&mut self, queue: &str, stamp: Stamp) {
        // Messages older than the histogram's range (a backlog) count at its top.
        let lat = self
            .now_us()
            .saturating_sub(stamp.sent_us)
            .clamp(1, MAX_LATENCY_US);
        self.received += 1;
        let _ = self.interval_e2e.record(lat);
        if self.measuring {
            let _ = self.e2e.record(lat);
            self.measured_received += 1;
        }
        if let Some(v) = self.verify.as_mut() {
            v.check(queue, stamp);
        }
    }

    /// The backlog starts draining: publish samples from the next closed
    /// second on also go to [`Recorder::draining`].
    pub fn start_drain(&mut self) {
        self.draining = Some(histogram());
    }

    /// The backlog is drained: [`Recorder::draining`] is complete and
    /// later seconds go to [`Recorder::drained`].
    pub fn end_drain(&mut self) {
        self.drained = Some(histogram());
    }

    /// Closes one second of the series; returns it.
    pub fn tick(&mut self, t: u64, last: (u64, u64)) -> Second {
        self.tick_with(t, last, None, 1)
    }

    /// Closes one second of the series, taking receipts from `consumers`
    /// when they were recorded apart; returns it. Every one of `groups`
    /// consumer groups receives each message, so the backlog is what the
    /// groups together have yet to receive.
    pub fn tick_with(
        &mut self,
        t: u64,
        last: (u64, u64),
        consumers: Option<&mut Recorder>,
        groups: u64,
    ) -> Second {
        let (received, e2e_p99_us) = match consumers {
            Some(c) => {
                let v = (c.received, c.interval_e2e.value_at_quantile(0.99));
                c.interval_e2e.reset();
                v
            }
            None => (self.received, self.interval_e2e.value_at_quantile(0.99)),
        };
        let s = Second {
            t,
            sent: self.acked - last.0,
            received: received - last.1,
            backlog: (self.acked * groups.max(1)).saturating_sub(received),
            publish_p50_us: self.interval_publish.value_at_quantile(0.5),
            publish_p99_us: self.interval_publish.value_at_quantile(0.99),
            e2e_p99_us,
        };
        let phase = self.drained.as_mut().or(self.draining.as_mut());
        if let (Some(h), true) = (phase, self.measuring) {
            let _ = h.add(&self.interval_publish);
        }
        self.interval_publish.reset();
        self.interval_e2e.reset();
        self.series.push(s.clone());
        s
    }

    /// Takes in what a consumers' recorder measured: receipts, the
    /// end-to-end histogram, and the `--verify` checks.
    pub fn absorb(&mut self, c: Recorder) {
        let _ = self.e2e.add(&c.e2e);
        self.received += c.received;
        self.measured_received += c.measured_received;
        if let (Some(mine), Some(theirs)) = (self.verify.as_mut(), c.verify) {
            mine.out_of_order += theirs.out_of_order;
            mine.duplicates += theirs.duplicates;
            for (p, bits) in theirs.seen {
                let into = mine.seen.entry(p).or_default();
                if into.len() < bits.len() {
                    into.resize(bits.len(), 0);
                }
                for (i, w) in bits.into_iter().enumerate() {
                    // A bit set on both sides is a message received twice.
                    mine.duplicates += u64::from((into[i] & w).count_ones());
                    into[i] |= w;
                }
            }
        }
    }
}

/// Live checks: per queue and producer, sequences only go up; no message
/// arrives twice (per consumer group the recorder is shared, so a group's
/// members are checked together).
#[derive(Debug, Default)]
pub struct Verifier {
    last: HashMap<(String, u32), u64>,
    seen: HashMap<u32, Vec<u64>>,
    acked: HashMap<u32, Vec<u64>>,
    pub out_of_order: u64,
    pub duplicates: u64,
}

impl Verifier {
    fn check(&mut self, queue: &str, s: Stamp) {
        let key = (queue.to_owned(), s.producer);
        if let Some(&prev) = self.last.get(&key) {
            if s.seq < prev {
                self.out_of_order += 1;
            }
        }
        self.last.insert(key, s.seq);
        // A bitmap per producer: one bit per sequence number.
        if set_bit(self.seen.entry(s.producer).or_default(), s.seq) {
            self.duplicates += 1;
        }
    }

    /// Acknowledged messages no consumer received.
    pub fn lost(&self) -> u64 {
        self.acked
            .iter()
            .map(|(p, acked)| {
                let seen = self.seen.get(p);
                acked
                    .iter()
                    .enumerate()
                    .map(|(i, &a)| {
                        let s = seen.and_then(|v| v.get(i)).copied().unwrap_or(0);
                        u64::from((a & !s).count_ones())
                    })
                    .sum::<u64>()
            })
            .sum()
    }

    /// Sequences of `producer` below `upto` never seen.
    pub fn missing(&self, producer: u32, acked: &[u64]) -> u64 {
        let bits = self.seen.get(&producer);
        acked
            .iter()
            .filter(|&&seq| {
                let (w, b) = ((seq / 64) as usize, seq % 64);
                bits.and_then(|v| v.get(w))
                    .is_none_or(|x| x & (1 << b) == 0)
            })
            .count() as u64
    }
}

/// Sets bit `n`; returns whether it was already set.
fn set_bit(bits: &mut Vec<u64>, n: u64) -> bool {
    let (word, bit) = ((n / 64) as usize, n % 64);
    if bits.len() <= word {
        bits.resize(word + 1, 0);
    }
    let was = bits[word] & (1 << bit) != 0;
    bits[word] |= 1 << bit;
    was
}

/// Percentiles of a histogram, for tables and JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stamps_round_trip_and_foreign_bytes_are_not_stamps() {
        let s = Stamp {
            producer: 7,
            seq: 1 << 40,
            sent_us: 123_456,
        };
        let p = s.payload(100);
        assert_eq!(p.len(), 100);
        assert_eq!(Stamp::read(&p), Some(s));
        // Carved from an arena: the same bytes, also past a block's end
        // and for a payload bigger than a block.
        let mut arena = PayloadArena::default();
        for size in [100, 24, ARENA_BLOCK_BYTES - 10, 100, ARENA_BLOCK_BYTES + 1] {
            let a = s.payload_in(size, &mut arena);
            assert_eq!(&a[..], &s.payload(size)[..], "{size}");
        }
        assert_eq!(s.payload_in(3, &mut arena).len(), 24, "a stamp at least");
        assert_eq!(Stamp::read(b"hello"), None);
    }

    #[test]
    fn the_verifier_finds_duplicates_reordering_and_gaps() {
        let mut v = Verifier::default();
        let st = |seq| Stamp {
            producer: 1,
            seq,
            sent_us: 0,
        };
        for seq in [0, 1, 2, 2, 1, 5] {
            v.check("q0", st(seq));
        }
        assert_eq!(v.duplicates, 2);
        assert_eq!(v.out_of_order, 1);
        assert_eq!(v.missing(1, &[0, 1, 2, 3, 4, 5]), 2);
        for seq in 0..6 {
            set_bit(v.acked.entry(1).or_default(), seq);
        }
        assert_eq!(v.lost(), 2);
    }

    #[test]
    fn consumer_side_recorders_merge_counts_histograms_and_checks() {
        let epoch = Instant::now();
        let mut producers = Recorder::with_epoch(true, epoch);
        let mut consumers = Recorder::with_epoch(true, epoch);
        producers.measuring = true;
        consumers.measuring = true;
        let st = |seq| Stamp {
            producer: 3,
            seq,
            sent_us: 0,
        };
        for seq in 0..10 {
            producers.on_ack(st(seq), 100);
        }
        // 0..8 received, 5 twice; 8 and 9 never.
        for seq in (0..8).chain([5]) {
            consumers.on_receive("q", st(seq));
        }
        let second = producers.tick_with(1, (0, 0), Some(&mut consumers), 1);
        assert_eq!((second.sent, second.received, second.backlog), (10, 9, 1));
        producers.absorb(consumers);
        assert_eq!(producers.received, 9);
        assert_eq!(producers.e2e.len(), 9);
        let v = producers.verify.as_ref().unwrap();
        assert_eq!((v.duplicates, v.lost()), (1, 2));
    }

    #[test]
    fn an_ack_time_given_by_the_client_is_the_one_recorded() {
        let epoch = Instant::now();
        let mut r = Recorder::with_epoch(false, epoch);
        r.measuring = true;
        let st = |sent_us| Stamp {
            producer: 0,
            seq: 0,
            sent_us,
        };
        // Acknowledged 2.5 ms after the epoch: 2 ms after a send intended
        // at 0.5 ms, whenever this test reads its own clock.
        let acked_at = epoch + Duration::from_micros(2_500);
        r.on_ack_at(st(500), 100, acked_at);
        // An acknowledgement time before the intended send time (a clock
        // read before a late-scheduled stamp) counts as the minimum.
        r.on_ack_at(st(3_000), 100, acked_at);
        assert_eq!(r.publish.len(), 2);
        assert_eq!(r.publish.max(), r.publish.highest_equivalent(2_000));
        assert_eq!(r.publish.min(), 1);
    }

    #[test]
    fn the_drain_histogram_holds_only_the_seconds_of_the_drain() {
        let mut r = Recorder::new(false);
        r.measuring = true;
        let st = |seq| Stamp {
            producer: 0,
            seq,
            sent_us: 0,
        };
        r.on_ack(st(0), 100);
        r.tick(1, (0, 0));
        assert!(r.draining.is_none(), "no backlog phase yet");
        r.start_drain();
        for seq in 1..4 {
            r.on_ack(st(seq), 100);
        }
        r.tick(2, (1, 0));
        r.end_drain();
        for seq in 4..10 {
            r.on_ack(st(seq), 100);
        }
        r.tick(3, (4, 0));
        assert_eq!(r.draining.as_ref().unwrap().len(), 3);
        assert_eq!(r.drained.as_ref().unwrap().len(), 6);
        assert_eq!(r.publish.len(), 10);
    }
}
