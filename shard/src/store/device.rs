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

/// The CPU that takes the completion interrupts of the disk holding `dir`:
/// of the disk's busiest interrupt (its I/O queue, not its configuration
/// one) in `/proc/interrupts`, the CPU it is routed to now, or of several,
/// the one it has hit most. Counts alone go back to boot and would miss an
/// interrupt steered since. `None` where that cannot be told: a folder on
/// tmpfs or overlay, a disk with no MSI interrupts, no interrupts yet.
pub fn disk_irq_cpu(dir: &Path) -> Option<usize> {
    let irqs = disk_irqs(dir)?;
    let table = std::fs::read_to_string("/proc/interrupts").ok()?;
    let (irq, counts) = busiest_irq(&table, &irqs)?;
    let routed = std::fs::read_to_string(format!("/proc/irq/{irq}/effective_affinity_list"))
        .ok()
        .and_then(|list| parse_cpu_list(&list));
    counts
        .into_iter()
        .filter(|(cpu, _)| routed.as_ref().is_none_or(|r| r.contains(cpu)))
        .max_by_key(|&(_, n)| n)
        .map(|(cpu, _)| cpu)
        .or_else(|| routed?.first().copied())
}

/// Whether this machine has CPU `cpu` (its sysfs node exists): a pinned
/// executor asked for one it lacks would fail, or fall back to no pinning.
pub fn cpu_exists(cpu: usize) -> bool {
    Path::new(&format!("/sys/devices/system/cpu/cpu{cpu}")).exists()
}

/// Parses a CPU list such as `0,2-3` (as `--cpus` takes and
/// `/proc/irq/N/effective_affinity_list` reads) into `[0, 2, 3]`; `None`
/// if it is malformed or empty.
pub(crate) fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b || b - a > 1024 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
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

/// From the text of `/proc/interrupts`, the interrupt of `irqs` with the
/// most interrupts in all, with its count per CPU; `None` if none has any.
fn busiest_irq(table: &str, irqs: &[String]) -> Option<(String, Vec<(usize, u64)>)> {
    let mut lines = table.lines();
    let cpus: Vec<usize> = lines
        .next()?
        .split_whitespace()
        .map(|c| c.strip_prefix("CPU")?.parse().ok())
        .collect::<Option<_>>()?;
    lines
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let irq = fields.next()?.strip_suffix(':')?;
            irqs.iter().any(|i| i == irq).then(|| {
                let counts: Vec<(usize, u64)> = cpus
                    .iter()
                    .zip(fields)
                    .map(|(&cpu, n)| (cpu, n.parse().unwrap_or(0)))
                    .collect();
                (irq.to_owned(), counts)
            })
        })
        .max_by_key(|(_, counts)| counts.iter().map(|&(_, n)| n).sum::<u64>())
        .filter(|(_, counts)| counts.iter().any(|&(_, n)| n > 0))
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
    fn the_busiest_interrupt_is_found_with_its_counts_by_cpu() {
        let irqs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            busiest_irq(TABLE, &irqs(&["35", "36"])),
            Some(("36".into(), vec![(0, 10), (2, 54647622)]))
        );
        assert_eq!(
            busiest_irq(TABLE, &irqs(&["28"])),
            Some(("28".into(), vec![(0, 2), (2, 0)]))
        );
        assert_eq!(
            busiest_irq(TABLE, &irqs(&["99"])),
            None,
            "no such interrupt"
        );
        assert_eq!(busiest_irq("", &irqs(&["36"])), None, "no table");
    }

    #[test]
    fn cpu_lists_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("1\n"), Some(vec![1]));
        assert_eq!(parse_cpu_list("0,2-3"), Some(vec![0, 2, 3]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list(""), None);
    }

    #[test]
    fn a_folder_on_this_machine_gets_an_online_cpu_or_none() {
        let dir = std::env::temp_dir();
        if let Some(cpu) = disk_irq_cpu(&dir) {
            assert!(cpu_exists(cpu), "CPU {cpu} exists");
        }
        assert!(cpu_exists(0));
        assert!(!cpu_exists(100_000));
        assert_eq!(disk_irq_cpu(Path::new("/no/such/folder")), None);
    }
}
