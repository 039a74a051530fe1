#!/usr/bin/env bash
# The server's edge against idle connections: starts a release toru-server under an open-file
# limit of 1,024 (soft and hard, as a service manager sets it), opens IDLE connections that send
# nothing (default 5,000), and reports the server's descriptors in use and /healthz latency on
# fresh connections meanwhile; then, with short timeouts, how long the server takes to close a
# connection that sends nothing and one left idle after a request.
#
#   benches/load/edge.sh
#   IDLE=10000 NOFILE=4096 benches/load/edge.sh
#
# Needs python3. Everything listens on 127.0.0.1 on free ports and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

IDLE=${IDLE:-5000}
NOFILE=${NOFILE:-1024}
HEADER_TIMEOUT=${HEADER_TIMEOUT:-2s}
IDLE_TIMEOUT=${IDLE_TIMEOUT:-3s}

echo "building the release server ..."
cargo build --release --quiet -p toru-server --bin toru-server
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
server="$target_dir/release/toru-server"

work=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

start() { # extra flags...
    sh -c 'ulimit -n "$0" && exec "$@"' "$NOFILE" "$server" serve --bind 127.0.0.1:0 \
        --plugins-dir "$work/plugins" --data-dir "$work/data" --log-dir "$work/logs" "$@" \
        >"$work/out" 2>"$work/err" &
    pid=$!
    for _ in $(seq 300); do
        if addr=$(grep -o 'listening on http://[0-9.:]*' "$work/out" 2>/dev/null | head -n1); then
            addr=${addr#listening on http://}
            return
        fi
        sleep 0.1
    done
    echo "the server did not start:" >&2
    cat "$work/err" >&2
    exit 1
}
stop() {
    kill -TERM "$pid"
    wait "$pid" || true
    pid=
}

export TORU_ADMIN_SECRET="edge-bench-$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"

start
echo "toru-server (pid $pid) under an open-file limit of $NOFILE: $(grep -o 'max_connections=[0-9]*' "$work/err")"
python3 - "$addr" "$pid" "$IDLE" <<'EOF'
import http.client, os, resource, socket, statistics, sys, time

addr, pid, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
host, port = addr.rsplit(":", 1)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

def descriptors():
    return len(os.listdir(f"/proc/{pid}/fd"))

def healthz_ms(n=50):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
        conn.close()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return times[0], statistics.median(times), times[int(len(times) * 0.99) - 1], times[-1]

print(f"before: {descriptors()} descriptors in use; /healthz min/median/p99/max "
      + "/".join(f"{t:.2f}" for t in healthz_ms()) + " ms")
idle = []
start = time.perf_counter()
for _ in range(count):
    s = socket.create_connection((host, int(port)), timeout=30)
    idle.append(s)
print(f"opened {count} idle connections in {time.perf_counter() - start:.1f} s")
print(f"with them: {descriptors()} descriptors in use; /healthz min/median/p99/max "
      + "/".join(f"{t:.2f}" for t in healthz_ms()) + " ms")
closed = 0
for s in idle:
    s.setblocking(False)
    try:
        if s.recv(1) == b"":
            closed += 1
    except BlockingIOError:
        pass
    except ConnectionError:
        closed += 1
print(f"{closed} of the {count} idle connections were closed by the server to make room")
EOF
stop

start --header-timeout "$HEADER_TIMEOUT" --idle-timeout "$IDLE_TIMEOUT"
echo "with --header-timeout $HEADER_TIMEOUT --idle-timeout $IDLE_TIMEOUT:"
python3 - "$addr" <<'EOF'
import socket, sys, time

host, port = sys.argv[1].rsplit(":", 1)

def until_closed(s):
    start = time.perf_counter()
    while True:
        try:
            if s.recv(4096) == b"":
                break
        except ConnectionError:
            break
    return time.perf_counter() - start

silent = socket.create_connection((host, int(port)))
print(f"a connection that sends nothing is closed after {until_closed(silent):.3f} s")
kept = socket.create_connection((host, int(port)))
kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
data = b""
while not data.endswith(b"}"):
    data += kept.recv(4096)
print(f"a kept-alive connection idle after its response is closed after {until_closed(kept):.3f} s")
EOF
stop
