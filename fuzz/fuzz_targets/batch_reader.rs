//! Reads arbitrary bytes as record batches. The first byte picks a mode:
//! even: the bytes as they are (what a damaged log or a hostile client sends);
//! odd: the rest becomes the records of a batch whose header, length and crc
//! are made valid, so the fuzzer reaches the record parser behind the crc.
//! Nothing may panic, and a batch that validates must yield all its records.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use ringmq_core::batch::{BatchBuilder, Batches, BATCH_HEADER_BYTES};
use ringmq_core::{Batch, QueueId, RecordInput};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        for batch in Batches::new(Bytes::copy_from_slice(rest)).flatten() {
            read(&batch, mode & 2 != 0);
        }
        return;
    }
    let mut one = BatchBuilder::new(QueueId(0));
    let _ = one.push(&RecordInput { body: b"x", ..Default::default() });
    let Ok(template) = one.finish() else { return };
    let mut buf = BytesMut::from(&template[..BATCH_HEADER_BYTES]);
    buf.extend_from_slice(rest);
    let length = buf.len() as u32;
    buf[24..28].copy_from_slice(&length.to_le_bytes());
    let count = u32::from(mode >> 1).max(1);
    buf[32..36].copy_from_slice(&count.to_le_bytes());
    let crc = ringmq_core::batch::compute_crc(&buf);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    let batch = Batch::parse(buf.freeze()).expect("header and crc were made valid");
    read(&batch, true);
});

fn read(batch: &Batch, validate: bool) {
    if validate && batch.validate().is_ok() {
        let n = batch.records().map(|r| r.expect("validated record parses")).count();
        assert_eq!(n as u32, batch.header().record_count);
        return;
    }
    for record in batch.records().flatten() {
        let _ = record.properties.iter().count();
    }
}
