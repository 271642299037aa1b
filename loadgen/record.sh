#!/usr/bin/env bash
# Records issue #7's benchmark results into bench-results/ (about 40 minutes):
#   1. max throughput, async, 100 B and 1 KiB, 1 topic x 8 queues, 2 shards
#   2. latency at 50 % of that maximum, after `floor` measured the host's
#      own CPU stalls, disk write latency and bare request path
#   3. the same with sync flush
#   4. compare with NATS JetStream and Redis Streams (installed if missing)
#   5. backlog: BACKLOG (default 100M) x 100 B stored, then a fixed rate while
#      a consumer group catches up from offset 0, next to the same rate without
# Every figure is 3 runs (median, min, max). Nothing else should run meanwhile.
# Usage: loadgen/record.sh [only-step ...]   (steps: max latency sync compare backlog)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(max latency sync compare backlog)
want() { [[ " ${steps[*]} " == *" $1 "* ]]; }
if want compare && ! command -v nats-server >/dev/null; then
    apt-get update -qq && apt-get install -y -qq nats-server redis-server redis-tools
fi
cargo build --release -p ringmq-loadgen
lg=target/release/ringmq-loadgen
common=(--shards 2 --topics 1 --queues 8 --producers 1 --groups 1 --consumers 1 --warmup 3 --duration 10 --report bench-results --repeat 3)
median_rate() { # the median published msg/s of the last repeat summary for a name
    local f; f=$(ls -t bench-results/compare-"$1"-x3-*.json | head -1)
    python3 -c "import json,sys; r=json.load(open('$f'))['rows']; print(int([x for x in r if x['figure']=='published msg/s'][0]['median']))"
}
if want latency; then
    # The host's own floor under the latency runs, measured just before
    # them: CPU stalls, direct writes shaped like a shard's log writes
    # under the half-rate load (about 36 KiB, ~1000 a second per shard),
    # and requests of that shape over loopback TCP, each written, then
    # answered, with no broker code in the way.
    command -v fio >/dev/null || (apt-get update -qq && apt-get install -y -qq fio) || true
    disk=(--disk "${RINGMQ_LOADGEN_DIR:-/var/tmp}" --write-kib 36 --writes-per-sec 1000 --disk-jobs 2)
    command -v fio >/dev/null || { echo "no fio: the floor has no disk part"; disk=(); }
    # Three times, like every figure here: the floor moves as much as the
    # latencies measured on it.
    for _ in 1 2 3; do
        $lg floor --seconds 10 "${disk[@]}" --report bench-results --name before-latency
    done
fi
for flush in async sync; do
    [ "$flush" = async ] && ! want max && ! want latency && continue
    [ "$flush" = sync ] && ! want sync && continue
    for size in 100 1024; do
        name="max-$flush-${size}B"
        $lg run "${common[@]}" --flush "$flush" --size "$size" --rate 0 --name "$name"
        rate=$(( $(median_rate "$name") / 2 ))
        $lg run "${common[@]}" --flush "$flush" --size "$size" --rate "$rate" --name "half-$flush-${size}B"
    done
done
if want compare; then
    for size in 100 1024; do
        # Max throughput: every driver at its default window (4096 in flight).
        $lg compare --rounds 3 --shards 2 --queues 8 --size "$size" --rate 0 --warmup 3 --duration 10 \
            --report bench-results --name "peers-async-${size}B"
    done
fi
if want backlog; then
    backlog=${BACKLOG:-100000000}
    # The baseline is cheap and one disk stall moves a single run's p99
    # (3.4 ms once against a 1.9 ms median): the ratio uses 3 runs' median.
    $lg run --shards 2 --queues 8 --size 100 --rate 50000 --warmup 3 --duration 30 --repeat 3 \
        --report bench-results --name backlog-baseline-50k
    $lg run --shards 2 --queues 8 --size 100 --rate 50000 --warmup 0 --duration 420 --backlog "$backlog" \
        --report bench-results --name "backlog-${backlog}-50k"
    # The same with catch-up disk reads held to 40 MiB/s per shard.
    $lg run --shards 2 --queues 8 --size 100 --rate 50000 --warmup 0 --duration 420 --backlog "$backlog" \
        --catch-up-mib-per-sec 40 --report bench-results --name "backlog-${backlog}-50k-catchup40"
fi
