#!/usr/bin/env bash
# Streaming benchmark: toru-server forwarding protocol 2 streams to `toru-test-plugin v2`
# (installed as `bench`), against a bare warp server (benches/src/bin/bare-stream-server.rs)
# serving the same bytes and the same WebSocket echo itself. The client is
# benches/src/bin/stream-bench.rs.
#
#   benches/load/streams.sh
#   BYTES=268435456 SLOW_BYTES=104857600 SSE_CLIENTS=200 benches/load/streams.sh   # quicker
#
# Prints, side by side: a 1 GiB download's MB/s through each and the ratio (target >= 1 GB/s and
# >= 0.5x); toru-server's resident-set growth while a client reads 1 GiB at 10 MB/s (target
# <= 32 MiB); WebSocket echo round trips one message at a time, p50 and p99 of each (target: p50
# within 2x); 1,000 concurrent SSE clients on one plugin (all get every tick; the server's memory
# and CPU). Everything listens on 127.0.0.1 on free ports, and everything it starts is stopped on
# exit. Needs curl and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."

echo "building release binaries ..."
cargo build --release --quiet -p toru-server -p toru-host -p toru-benches \
    --bin toru-server --bin toru-test-plugin --bin bare-stream-server --bin stream-bench
# shellcheck source=benches/load/common.sh
source benches/load/common.sh

# A thousand clients and their thousand streams need descriptors on both sides.
ulimit -n "$(ulimit -Hn)"

mkdir -p "$work/plugins"
printf '#!/bin/sh\nexec %q v2 bench "$@"\n' "$bin/toru-test-plugin" >"$work/plugins/bench.binary"
chmod +x "$work/plugins/bench.binary"
secret="bench-$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"

TORU_ADMIN_SECRET="$secret" RUST_LOG=warn "$bin/toru-server" serve --bind 127.0.0.1:0 \
    --plugins-dir "$work/plugins" --data-dir "$work/data" --log-dir "$work/logs" \
    >"$work/toru.out" 2>"$work/toru.err" &
toru_pid=$!
pids+=("$toru_pid")
toru=$(url_from "$work/toru.out")
for _ in $(seq 300); do
    state=$(curl -sf -H "Authorization: Bearer $secret" "$toru/api/plugins/bench" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["state"])' || true)
    [ "$state" = running ] && break
    sleep 0.1
done
[ "$state" = running ] || { echo "the bench plugin did not start: $state" >&2; cat "$work/toru.err" >&2; exit 1; }

"$bin/bare-stream-server" --bind 127.0.0.1:0 >"$work/bare.out" 2>&1 &
pids+=($!)
bare=$(url_from "$work/bare.out")

"$bin/stream-bench" --toru "$toru" --secret "$secret" --toru-pid "$toru_pid" --bare "$bare"
