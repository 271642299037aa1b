//! `verify --topic T --ack-log FILE`: reads the topic from its first
//! offset and checks it against every acknowledged message in the log
//! (lines `producer seq`): lost (acknowledged, missing), duplicated and
//! out-of-order (per queue and producer) counts.

use crate::stats::Stamp;
use ringmq_client::{Client, ClientConfig, PullConsumer};
use ringmq_core::{GroupName, TopicName};
use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

/// What the check found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub acknowledged: u64,
    pub read: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

/// Reads the ack log: every (producer, seq) acknowledged.
pub fn read_ack_log(path: &Path) -> Result<HashSet<(u32, u64)>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut acked = HashSet::new();
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        let mut it = line.split_whitespace();
        let (Some(p), Some(s), None) = (it.next(), it.next(), it.next()) else {
            return Err(format!(
                "{}:{}: expected `producer seq`",
                path.display(),
                n + 1
            ));
        };
        let p = p
            .parse()
            .map_err(|_| format!("{}:{}: bad producer", path.display(), n + 1))?;
        let s = s
            .parse()
            .map_err(|_| format!("{}:{}: bad sequence", path.display(), n + 1))?;
        acked.insert((p, s));
    }
    Ok(acked)
}

/// Reads `topic` in full and compares it with `acked`.
pub fn verify(
    namesrv: Vec<String>,
    topic: &str,
    acked: &HashSet<(u32, u64)>,
) -> Result<VerifyReport, String> {
    let topic = TopicName::new(topic).map_err(|e| e.to_string())?;
    let mut rt = ringmq_client::runtime().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let client = Client::new(ClientConfig::new(namesrv)).map_err(|e| e.to_string())?;
        let pull = PullConsumer::new(
            &client,
            GroupName::new("loadgen-verify").map_err(|e| e.to_string())?,
        );
        let mut report = VerifyReport {
            acknowledged: acked.len() as u64,
            ..Default::default()
        };
        let mut seen: HashSet<(u32, u64)> = HashSet::new();
        for q in pull.queues(&topic).await.map_err(|e| e.to_string())? {
            let (mut offset, _) = client.queue_offsets(&q).await.map_err(|e| e.to_string())?;
            let mut last: HashMap<u32, u64> = HashMap::new();
            loop {
                let r = pull
                    .pull(&q, offset, 4 << 20, Duration::ZERO)
                    .await
                    .map_err(|e| e.to_string())?;
                for m in &r.messages {
                    let Some(s) = Stamp::read(&m.body) else {
                        continue;
                    };
                    report.read += 1;
                    if !seen.insert((s.producer, s.seq)) {
                        report.duplicated += 1;
                    }
                    if last.get(&s.producer).is_some_and(|&prev| s.seq < prev) {
                        report.out_of_order += 1;
                    }
                    last.insert(s.producer, s.seq);
                }
                if r.next_offset <= offset {
                    break;
                }
                offset = r.next_offset;
            }
        }
        report.lost = acked.iter().filter(|a| !seen.contains(a)).count() as u64;
        Ok(report)
    })
}
