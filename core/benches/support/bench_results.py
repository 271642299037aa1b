"""bench-results/ helpers for the Python A/B scripts (shard/benches/store-ab.py,
third_party/fence_ab.py), matching what the Rust bench programs do in
core/benches/support/mod.rs."""

import os
import subprocess


def refresh_index(out):
    """Rewrites out/README.md as a list of every report's title, sorted by
    file name (`refresh_index` in mod.rs)."""
    rows = []
    for name in sorted(os.listdir(out)):
        if not name.endswith(".md") or name == "README.md":
            continue
        with open(os.path.join(out, name)) as f:
            title = f.readline().rstrip("\n")
        title = title[2:] if title.startswith("# ") else title
        rows.append((name, title))
    index = ("# Recorded benchmark results\n\nOne JSON (every setting, machine facts, commit, all "
             "figures) and one Markdown summary per run. Newest last.\n\n| run | summary |\n|---|---|\n")
    for name, title in rows:
        stem = name[: -len(".md")]
        index += f"| [{title}]({name}) | [{stem}.json]({stem}.json) |\n"
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(index)


def checkout_commit():
    """The short commit of the checkout these scripts belong to (not of the
    folder they are run from), with -dirty if it has changes."""
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=here).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain") else "")
