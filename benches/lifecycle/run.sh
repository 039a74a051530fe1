#!/usr/bin/env bash
# The live plugins folder and start-up at scale, measured:
#
#   benches/lifecycle/run.sh            # PLUGINS=200 by default
#
# 1. `cargo bench --bench live_folder` (benches/benches/live_folder.rs): file drop to serving,
#    requests failed during 20 upgrades under load, start-up of a host with 200 plugins.
# 2. toru-server itself with PLUGINS copies of toru-test-plugin (distinct ids) in its folder:
#    time from starting the process to `/healthz` answering 200, and to every plugin running
#    (`GET /api/plugins`, polled every 50 ms: the figure is that coarse).
#
# Release builds; everything listens on 127.0.0.1 on a free port and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

PLUGINS=${PLUGINS:-200}

echo "building release binaries ..."
cargo build --release --quiet -p toru-server -p toru-host --bin toru-server --bin toru-test-plugin
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/release"

echo "== toru-host (cargo bench --bench live_folder)"
cargo bench --quiet -p toru-benches --bench live_folder

work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/plugins"
for i in $(seq -f "%03g" 0 $((PLUGINS - 1))); do
    printf '#!/bin/sh\nexec %s serve p%s "$@"\n' "$bin/toru-test-plugin" "$i" >"$work/plugins/p$i.binary"
    chmod +x "$work/plugins/p$i.binary"
done

secret=bench-secret
now_ms() { date +%s%3N; }
t0=$(now_ms)
TORU_ADMIN_SECRET=$secret "$bin/toru-server" --bind 127.0.0.1:0 --plugins-dir "$work/plugins" \
    --data-dir "$work/data" --log-dir "$work/logs" >"$work/stdout" 2>"$work/stderr" &
server_pid=$!

url=
for _ in $(seq 3000); do
    url=$(sed -n 's/^toru-server listening on //p' "$work/stdout")
    [ -n "$url" ] && break
    sleep 0.001
done
[ -n "$url" ] || { echo "toru-server did not start"; cat "$work/stderr"; exit 1; }
until curl -sf -o /dev/null "$url/healthz"; do sleep 0.001; done
t_health=$(now_ms)

running=0
for _ in $(seq 6000); do
    running=$(curl -sf -H "Authorization: Bearer $secret" "$url/api/plugins" |
        python3 -c 'import json, sys; print(sum(p["state"] == "running" for p in json.load(sys.stdin)["plugins"]))')
    [ "$running" -ge "$PLUGINS" ] && break
    sleep 0.05
done
t_all=$(now_ms)
echo "== toru-server with $PLUGINS plugins"
echo "/healthz answered $((t_health - t0)) ms after the process started"
echo "$running of $PLUGINS plugins running $((t_all - t0)) ms after the process started"
