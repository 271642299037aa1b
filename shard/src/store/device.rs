//! Which CPU takes a data folder's disk completion interrupts.
//!
//! A write or fdatasync completes in the disk's interrupt handler, on
//! whichever CPU that interrupt is routed to. If the shard waiting for it
//! runs elsewhere, every completion also costs a cross-CPU wake-up, which
//! in a virtual machine is an exit on each side. On a single-queue device
//! (this project's virtio disk) one CPU takes them all. Measured with the
//! store bench's `sync` case (256 appenders, recycled segments), pinning
//! the shard to the interrupt's CPU instead of the other one raised acks/s
//! from 239-286k to 330-343k in three pairs, and lowered p99 from
//! 2.8-4.5 ms to 1.7-2.1 ms. Storage systems built thread-per-core tune
//! this the other way round too (ScyllaDB's perftune steers interrupts to
//! chosen CPUs); the broker only reports it, the store bench follows it.

use std::path::{Path, PathBuf};

/// The CPU that has taken the most completion interrupts of the disk
/// holding `dir`, from sysfs and `/proc/interrupts`. `None` where that
/// cannot be told: a folder on tmpfs or overlay, a disk with no MSI
/// interrupts, no interrupts yet.
pub fn disk_irq_cpu(dir: &Path) -> Option<usize> {
    let irqs = disk_irqs(dir)?;
    let table = std::fs::read_to_string("/proc/interrupts").ok()?;
    busiest_cpu(&table, &irqs)
}

/// The MSI interrupt numbers of the device behind `dir`'s file system:
/// its block device's sysfs node, walked up to the function with
/// `msi_irqs` (the PCI device of a virtio or NVMe disk).
fn disk_irqs(dir: &Path) -> Option<Vec<String>> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let mut node: PathBuf =
        std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    loop {
        if let Ok(entries) = std::fs::read_dir(node.join("msi_irqs")) {
            let irqs: Vec<String> = entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect();
            return (!irqs.is_empty()).then_some(irqs);
        }
        if !node.pop() || node == Path::new("/sys/devices") {
            return None;
        }
    }
}

/// From the text of `/proc/interrupts`, the CPU with the most interrupts
/// summed over `irqs`; `None` if they have none.
fn busiest_cpu(table: &str, irqs: &[String]) -> Option<usize> {
    let mut lines = table.lines();
    let cpus: Vec<usize> = lines
        .next()?
        .split_whitespace()
        .map(|c| c.strip_prefix("CPU")?.parse().ok())
        .collect::<Option<_>>()?;
    let mut counts = vec![0u64; cpus.len()];
    for line in lines {
        let mut fields = line.split_whitespace();
        let Some(irq) = fields.next().and_then(|f| f.strip_suffix(':')) else {
            continue;
        };
        if irqs.iter().any(|i| i == irq) {
            for (count, field) in counts.iter_mut().zip(fields) {
                *count += field.parse::<u64>().unwrap_or(0);
            }
        }
    }
    let (i, &most) = counts.iter().enumerate().max_by_key(|&(_, n)| *n)?;
    (most > 0).then(|| cpus[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "           CPU0       CPU2
 28:          2          0 PCI-MSIX-0000:00:01.0   0-edge      virtio0-config
 35:          0          2 PCI-MSIX-0000:00:02.0   0-edge      virtio1-config
 36:         10   54647622 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
NMI:          0          0   Non-maskable interrupts
";

    #[test]
    fn the_busiest_cpu_is_named_by_its_column() {
        let irqs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(busiest_cpu(TABLE, &irqs(&["35", "36"])), Some(2));
        assert_eq!(busiest_cpu(TABLE, &irqs(&["28"])), Some(0));
        assert_eq!(
            busiest_cpu(TABLE, &irqs(&["99"])),
            None,
            "no such interrupt"
        );
        assert_eq!(busiest_cpu("", &irqs(&["36"])), None, "no table");
    }

    #[test]
    fn a_folder_on_this_machine_gets_an_online_cpu_or_none() {
        let dir = std::env::temp_dir();
        if let Some(cpu) = disk_irq_cpu(&dir) {
            let node = format!("/sys/devices/system/cpu/cpu{cpu}");
            assert!(Path::new(&node).exists(), "{node} exists");
        }
        assert_eq!(disk_irq_cpu(Path::new("/no/such/folder")), None);
    }
}
