#!/usr/bin/env bash
# Runs the storage benchmark with fio beside it; installs fio if missing.
# Arguments go to the bench program (see shard/benches/store.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v fio >/dev/null; then
    echo "installing fio (Debian package) for the machine's own disk limits"
    apt-get update -qq && apt-get install -y -qq fio
fi
exec cargo bench -p ringmq-shard --bench store -- --out bench-results "$@"
