#!/usr/bin/env bash
# Load benchmark: toru-server forwarding `GET /plugins/hello-rust/` to hello-plugin-rust, against
# a bare warp server (benches/src/bin/bare-server.rs) answering the same bytes itself.
#
#   benches/load/run.sh                 # wrk -t2 -c64 -d10s --latency against each
#   DURATION=30s CONNECTIONS=128 benches/load/run.sh
#
# Prints requests/s and p99 latency of both and their ratio. The target: toru-server at least
# 0.6x the bare server's requests/s, and a p99 no worse than the bare server's.
# Needs wrk (installed with apt-get when missing), curl and python3. Everything listens on
# 127.0.0.1 on free ports, and everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
DURATION=${DURATION:-10s}

if ! command -v wrk >/dev/null; then
    echo "installing wrk ..."
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi

echo "building release binaries ..."
cargo build --release --quiet -p toru-server -p hello-plugin-rust -p toru-benches \
    --bin toru-server --bin hello-plugin-rust --bin bare-server
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/release"

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Waits (up to 30 s) for "listening on http://ADDR" in file $1 and prints the URL.
url_from() {
    for _ in $(seq 300); do
        if url=$(grep -o 'listening on http://[0-9.:]*' "$1" 2>/dev/null | head -n1); then
            echo "${url#listening on }"
            return
        fi
        sleep 0.1
    done
    echo "no listening line in $1:" >&2
    cat "$1" >&2
    exit 1
}

mkdir -p "$work/plugins"
cp "$bin/hello-plugin-rust" "$work/plugins/hello-rust.binary"
secret="bench-$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
auth="Authorization: Bearer $secret"

TORU_ADMIN_SECRET="$secret" "$bin/toru-server" serve --bind 127.0.0.1:0 \
    --plugins-dir "$work/plugins" --data-dir "$work/data" --log-dir "$work/logs" \
    >"$work/toru.out" 2>"$work/toru.err" &
pids+=($!)
toru=$(url_from "$work/toru.out")
for _ in $(seq 300); do
    state=$(curl -sf -H "$auth" "$toru/api/plugins/hello-rust" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["state"])' || true)
    [ "$state" = running ] && break
    sleep 0.1
done
[ "$state" = running ] || { echo "hello-rust did not start: $state" >&2; cat "$work/toru.err" >&2; exit 1; }

curl -sf -H "$auth" "$toru/plugins/hello-rust/" -o "$work/body.json"
"$bin/bare-server" --bind 127.0.0.1:0 --body-file "$work/body.json" >"$work/bare.out" 2>&1 &
pids+=($!)
bare=$(url_from "$work/bare.out")
curl -sf "$bare/hello-rust/" -o "$work/bare-body.json"
cmp -s "$work/body.json" "$work/bare-body.json" || { echo "the bodies differ" >&2; exit 1; }
echo "both answer the same $(wc -c <"$work/body.json") bytes: $(cat "$work/body.json")"

run() { # name url [header]
    local name=$1 url=$2
    shift 2
    # A short warm-up, then the measured run.
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$@" "$url" >/dev/null
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url" >"$work/$name.txt"
    if grep -q 'Non-2xx' "$work/$name.txt"; then
        echo "$name: some answers were not 2xx:" >&2
        cat "$work/$name.txt" >&2
        exit 1
    fi
}
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, one server at a time ..."
run toru "$toru/plugins/hello-rust/" -H "$auth"
run bare "$bare/hello-rust/"

python3 - "$work/toru.txt" "$work/bare.txt" <<'EOF'
import re, sys

def read(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", text).group(1))
    value, unit = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M).groups()
    p99_ms = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, p99_ms

toru, bare = read(sys.argv[1]), read(sys.argv[2])
print(f"{'':24}{'requests/s':>12}{'p99 (ms)':>12}")
print(f"{'toru-server -> plugin':24}{toru[0]:>12.0f}{toru[1]:>12.2f}")
print(f"{'bare warp server':24}{bare[0]:>12.0f}{bare[1]:>12.2f}")
ratio = toru[0] / bare[0]
print(f"ratio (toru / bare): {ratio:.2f}x requests/s; p99 {toru[1]:.2f} ms vs {bare[1]:.2f} ms")
ok = ratio >= 0.6 and toru[1] <= bare[1]
print("target (>= 0.6x and a p99 no worse):", "met" if ok else "NOT met")
EOF
