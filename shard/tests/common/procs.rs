//! Broker child processes for tests: start on free ports, stop by signal.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // test-only helpers

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Child_ {
    pub child: Child,
    pub front: SocketAddr,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn spawn_broker(data: &std::path::Path, flush: &str) -> Child_ {
    spawn_broker_with(data, &["--flush", flush])
}

/// A 2-shard broker child with extra flags, started and accepting.
pub fn spawn_broker_with(data: &std::path::Path, extra: &[&str]) -> Child_ {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_ringmq-broker"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--shard-port-base",
            "0",
            "--shards",
            "2",
            "--segment-mib",
            "64",
        ])
        .args(extra)
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(front).is_err() {
        assert!(Instant::now() < deadline, "broker did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Child_ { child, front }
}

impl Drop for Child_ {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sigterm_and_wait(c: &mut Child_) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &c.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = c.child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "broker did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
