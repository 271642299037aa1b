//! Shared by the bench programs (included with `#[path]`, as benches are
//! not a crate): machine facts, commit, spreads, and writing a report pair
//! (JSON + Markdown) into `bench-results/` with its index.
#![allow(dead_code, unreachable_pub)]

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Serialize, Clone, Copy)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

/// Min, median and max of repeated measurements (at least one).
pub fn spread(mut v: Vec<f64>) -> Spread {
    v.sort_by(f64::total_cmp);
    Spread {
        min: v[0],
        median: v[v.len() / 2],
        max: v[v.len() - 1],
    }
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub sse42: bool,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
        })
        .map_or_else(|| "unknown".into(), |m| m.trim().to_owned());
    Machine {
        cpu_model,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |k| k.trim().to_owned()),
        sse42: cpuinfo.contains(" sse4_2"),
    }
}

pub fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub fn git_commit() -> String {
    let commit = command_output("git", &["rev-parse", "--short=12", "HEAD"])
        .unwrap_or_else(|| "unknown".into());
    // Results written by earlier runs (and their index) do not make the
    // code under test dirty.
    let dirty = command_output(
        "git",
        &[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!bench-results",
        ],
    )
    .is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    }
}

/// `YYYY-MM-DDTHH-MM-SSZ` from the system clock (civil-from-days, UTC).
pub fn utc_stamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}-{:02}-{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Rewrites `dir/README.md` as a list of every report's title.
pub fn refresh_index(dir: &Path) -> std::io::Result<()> {
    let mut rows: Vec<(String, String)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md") && n != "README.md")
        .map(|n| {
            let title = std::fs::read_to_string(dir.join(&n))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .next()
                        .map(|l| l.trim_start_matches("# ").to_owned())
                })
                .unwrap_or_default();
            (n, title)
        })
        .collect();
    rows.sort();
    let mut index = String::from(
        "# Recorded benchmark results\n\nOne JSON (every setting, machine facts, commit, all figures) \
         and one Markdown summary per run. Newest last.\n\n| run | summary |\n|---|---|\n",
    );
    for (name, title) in rows {
        let json = name.trim_end_matches(".md");
        index += &format!("| [{title}]({name}) | [{json}.json]({json}.json) |\n");
    }
    std::fs::write(dir.join("README.md"), index)
}

/// Resolves `--out`: relative paths start at the workspace root, where
/// `bench-results/` lives (`cargo bench` runs in the package folder).
pub fn out_dir(out: &Path) -> PathBuf {
    if out.is_relative() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(out)
    } else {
        out.to_owned()
    }
}

/// What to tell a user whose fio could not be started.
pub fn fio_not_runnable(e: &std::io::Error) -> String {
    format!("fio not runnable ({e}); install it with `apt-get install fio`")
}

/// Runs fio in `dir` with `args` and returns its JSON report.
pub fn fio(dir: &Path, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = std::process::Command::new("fio")
        .arg(format!("--directory={}", dir.display()))
        .args(args)
        .arg("--output-format=json")
        .output()
        .map_err(|e| fio_not_runnable(&e))?;
    if !out.status.success() {
        return Err(format!(
            "fio failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("fio output: {e}"))
}

/// Writes `<prefix>-<utc>-<commit>.{json,md}` and refreshes the index.
pub fn write_report<T: Serialize>(
    dir: &Path,
    prefix: &str,
    started_utc: &str,
    commit: &str,
    json: &T,
    md: &str,
) -> std::io::Result<PathBuf> {
    let base = dir.join(format!("{prefix}-{started_utc}-{commit}"));
    std::fs::create_dir_all(dir)?;
    let text = serde_json::to_string_pretty(json).map_err(std::io::Error::other)?;
    std::fs::write(base.with_extension("json"), text)?;
    std::fs::write(base.with_extension("md"), md)?;
    refresh_index(dir)?;
    Ok(base)
}
