//! Feeds arbitrary bytes to the frame decoder in arbitrary chunk sizes, then
//! decodes every frame's typed header. Nothing may panic; every frame that
//! decodes must re-encode to the bytes it came from.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringmq_core::{Frame, FrameDecoder};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    // A small cap so the fuzzer also explores the oversize path.
    let decoder = FrameDecoder::new(64 * 1024);
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => check(&frame),
                Ok(None) => break,
                Err(e) if e.is_fatal() => return,
                Err(_) => {}
            }
        }
    }
});

fn check(frame: &Frame) {
    let _ = frame.decode_request();
    let _ = frame.decode_response();
    let mut again = BytesMut::new();
    frame.encode(&mut again).expect("a decoded frame re-encodes");
    let back = FrameDecoder::new(64 * 1024)
        .decode(&mut again)
        .expect("re-encoded frame decodes")
        .expect("whole frame");
    assert_eq!(&back, frame);
}
