#!/usr/bin/env bash
# Load benchmark: toru-server forwarding to hello-plugin-rust, against a bare warp server
# (benches/src/bin/bare-server.rs) answering the same bytes itself, side by side.
#
#   benches/load/run.sh                         # every case once, then the 30 s check
#   RUNS=3 benches/load/run.sh                  # every case three times (median and spread)
#   CASES="get:64" DURATION=30s CHECK=0 benches/load/run.sh
#
# Cases (CASES, default "get:64 post:64 get:256 post:256"), each `kind:connections`:
#   get   GET /plugins/hello-rust/ (a 105-byte JSON greeting) against the bare GET /hello-rust/
#   post  POST /plugins/hello-rust/sha256 with a 1 KiB JSON body (load/post.json, sent by
#         load/post.lua); the answer is the body's SHA-256 in hex, which the bare server computes
# Each case runs wrk -t$THREADS -c<connections> -d$DURATION --latency against toru-server, then
# against the bare server (after a 2 s warm-up of each). Before any of it, the script checks that
# both servers answer the same bytes (status, headers but Date, and body) for both requests.
#
# Reported per case: requests/s and p99 of both, their ratio, and the CPU time per request of each
# process (utime + stime from /proc/<pid>/stat over the run, divided by the requests wrk counted):
# toru-server, the plugin, the bare server. wrk itself runs on the same machine.
#
# Then (CHECK=1, the default) the no-loss check: wrk -c256 for $CHECK_DURATION (30 s) of GETs
# through toru-server, and three counts that must agree: the responses wrk got, the greetings the
# plugin counted (GET /hello-rust/stats), and the 200s toru-server's /metrics counted for it.
# None may be lost (no socket error, no timeout, no non-2xx) and none answered twice (the
# plugin's count is at least wrk's, and exceeds it by at most the requests in flight when wrk
# stopped: one per connection).
#
# The target: toru-server at least 0.6x the bare server's requests/s, with a p99 no worse.
# Needs wrk (installed with apt-get when missing), curl and python3. Everything listens on
# 127.0.0.1 on free ports, and everything it starts is stopped on exit.
#
# Profiling (docs/operations-server.md, "Load benchmark", has the commands): while a case runs,
# `perf stat -e context-switches,raw_syscalls:sys_enter -p <pid>` counts syscalls and switches,
# and `perf record -e cpu-clock -p <pid>` samples where the time goes.
set -euo pipefail
cd "$(dirname "$0")/../.."

THREADS=${THREADS:-2}
CASES=${CASES:-get:64 post:64 get:256 post:256}
DURATION=${DURATION:-10s}
RUNS=${RUNS:-1}
CHECK=${CHECK:-1}
CHECK_DURATION=${CHECK_DURATION:-30s}
CHECK_CONNECTIONS=${CHECK_CONNECTIONS:-256}

if ! command -v wrk >/dev/null; then
    echo "installing wrk ..."
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi

echo "building release binaries ..."
cargo build --release --quiet -p toru-server -p hello-plugin-rust -p toru-benches \
    --bin toru-server --bin hello-plugin-rust --bin bare-server
# shellcheck source=benches/load/common.sh
source benches/load/common.sh
post_lua="$PWD/benches/load/post.lua"
post_json="$PWD/benches/load/post.json"

mkdir -p "$work/plugins"
cp "$bin/hello-plugin-rust" "$work/plugins/hello-rust.binary"
secret="bench-$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
auth="Authorization: Bearer $secret"

TORU_ADMIN_SECRET="$secret" "$bin/toru-server" serve --bind 127.0.0.1:0 \
    --plugins-dir "$work/plugins" --data-dir "$work/data" --log-dir "$work/logs" \
    >"$work/toru.out" 2>"$work/toru.err" &
toru_pid=$!
pids+=("$toru_pid")
toru=$(url_from "$work/toru.out")
for _ in $(seq 300); do
    state=$(curl -sf -H "$auth" "$toru/api/plugins/hello-rust" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["state"])' || true)
    [ "$state" = running ] && break
    sleep 0.1
done
[ "$state" = running ] || { echo "hello-rust did not start: $state" >&2; cat "$work/toru.err" >&2; exit 1; }
plugin_pid=$(curl -sf -H "$auth" "$toru/api/plugins/hello-rust" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["pid"])')

curl -sf -H "$auth" "$toru/plugins/hello-rust/" -o "$work/body.json"
"$bin/bare-server" --bind 127.0.0.1:0 --body-file "$work/body.json" >"$work/bare.out" 2>&1 &
bare_pid=$!
pids+=("$bare_pid")
bare=$(url_from "$work/bare.out")

# Status line, headers but Date (names in lower case, in order) and body of one answer.
answer() { # output-file curl-args...
    local out=$1
    shift
    curl -sf -D "$out.head" -o "$out.body" "$@"
    tr -d '\r' <"$out.head" | grep -v '^$' | grep -iv '^date:' |
        awk -F': ' 'NR == 1 { print; next } { printf "%s: %s\n", tolower($1), $2 }' >"$out"
    cat "$out.body" >>"$out"
}
answer "$work/toru-get" -H "$auth" "$toru/plugins/hello-rust/"
answer "$work/bare-get" "$bare/hello-rust/"
answer "$work/toru-post" -H "$auth" -H 'Content-Type: application/json' \
    --data-binary "@$post_json" "$toru/plugins/hello-rust/sha256"
answer "$work/bare-post" -H 'Content-Type: application/json' \
    --data-binary "@$post_json" "$bare/hello-rust/sha256"
for kind in get post; do
    if ! cmp -s "$work/toru-$kind" "$work/bare-$kind"; then
        echo "the $kind answers differ:" >&2
        diff "$work/toru-$kind" "$work/bare-$kind" >&2 || true
        exit 1
    fi
    echo "both answer $kind with the same $(wc -c <"$work/toru-$kind.body") body bytes and headers:"
    sed 's/^/    /' "$work/toru-$kind"
    echo
done

ticks() { # utime + stime of process $1; a process gone (a plugin restarted) ends the run
    if ! awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null; then
        echo "process $1 is gone; toru-server's log says:" >&2
        grep -v -e processing -e "plugin call failed" -e "unable to process" "$work/toru.err" | tail -n 20 >&2
        exit 1
    fi
}
hz=$(getconf CLK_TCK)

# run NAME URL CONNECTIONS PID... -- WRK-ARGS...: one measured wrk run; appends a line to
# $work/results: name rps p99_ms requests cpu_us_per_request_of_each_pid...
run() {
    local name=$1 url=$2 conns=$3
    shift 3
    local procs=()
    while [ "$1" != "--" ]; do procs+=("$1"); shift; done
    shift
    wrk -t"$THREADS" -c"$conns" -d2s "$@" "$url" >/dev/null
    local before=()
    for p in "${procs[@]}"; do before+=("$(ticks "$p")"); done
    wrk -t"$THREADS" -c"$conns" -d"$DURATION" --latency "$@" "$url" >"$work/$name.txt"
    local cpu=()
    local i=0
    for p in "${procs[@]}"; do cpu+=($(($(ticks "$p") - before[i]))); i=$((i + 1)); done
    if grep -q -e 'Non-2xx' -e 'Socket errors' "$work/$name.txt"; then
        echo "$name: errors or answers that were not 2xx:" >&2
        cat "$work/$name.txt" >&2
        exit 1
    fi
    python3 - "$work/$name.txt" "$name" "$hz" "${cpu[@]}" >>"$work/results" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
name, hz, cpu = sys.argv[2], int(sys.argv[3]), [int(t) for t in sys.argv[4:]]
rps = float(re.search(r"Requests/sec:\s*([\d.]+)", text).group(1))
requests = int(re.search(r"(\d+) requests in", text).group(1))
value, unit = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M).groups()
p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
us = [t * 1e6 / hz / requests for t in cpu]
print(name, rps, p99, requests, *us)
EOF
}

: >"$work/results"
for r in $(seq "$RUNS"); do
    for case in $CASES; do
        kind=${case%%:*}
        conns=${case##*:}
        case $kind in
            get) toru_url="$toru/plugins/hello-rust/" bare_url="$bare/hello-rust/" lua=() ;;
            post) toru_url="$toru/plugins/hello-rust/sha256" bare_url="$bare/hello-rust/sha256" lua=(-s "$post_lua") ;;
            *) echo "unknown case $case" >&2; exit 1 ;;
        esac
        echo "run $r/$RUNS: $kind, wrk -t$THREADS -c$conns -d$DURATION, toru-server then bare ..."
        run "toru-$kind-$conns" "$toru_url" "$conns" "$toru_pid" "$plugin_pid" -- -H "$auth" "${lua[@]}"
        run "bare-$kind-$conns" "$bare_url" "$conns" "$bare_pid" -- "${lua[@]}"
    done
done

echo
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared; figures vary with it)"
python3 - "$work/results" "$RUNS" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, *values = line.split()
    rows.setdefault(name, []).append([float(v) for v in values])
runs = int(sys.argv[2])

def fig(values, fmt):
    mid = statistics.median(values)
    if len(values) == 1:
        return fmt.format(mid)
    return (fmt + " ({}-{})").format(mid, fmt.format(min(values)), fmt.format(max(values)))

cases = [n[len("toru-"):] for n in rows if n.startswith("toru-")]
met = True
print(f"median of {runs} run(s), (min-max) when more than one")
header = ["case", "toru req/s", "bare req/s", "ratio", "toru p99 ms", "bare p99 ms",
          "CPU us/req: toru-server", "plugin", "bare"]
table = [header]
for case in cases:
    t, b = rows["toru-" + case], rows["bare-" + case]
    ratios = [x[0] / y[0] for x, y in zip(t, b)]
    table.append([
        case,
        fig([x[0] for x in t], "{:.0f}"),
        fig([x[0] for x in b], "{:.0f}"),
        fig(ratios, "{:.2f}x"),
        fig([x[1] for x in t], "{:.2f}"),
        fig([x[1] for x in b], "{:.2f}"),
        fig([x[3] for x in t], "{:.1f}"),
        fig([x[4] for x in t], "{:.1f}"),
        fig([x[3] for x in b], "{:.1f}"),
    ])
    met &= statistics.median(ratios) >= 0.6
    met &= statistics.median([x[1] for x in t]) <= statistics.median([x[1] for x in b])
widths = [max(len(row[i]) for row in table) for i in range(len(header))]
for row in table:
    print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))
print("target (>= 0.6x the bare server's req/s and a p99 no worse, in every case):",
      "met" if met else "NOT met")
EOF

[ "$CHECK" = 1 ] || exit 0
echo
echo "no-loss check: wrk -t$THREADS -c$CHECK_CONNECTIONS -d$CHECK_DURATION GET through toru-server ..."
served() { # the 200s toru-server's /metrics counted for hello-rust
    curl -sf -H "$auth" "$toru/metrics" |
        python3 -c 'import re, sys
text = sys.stdin.read()
m = re.search(r"^toru_plugin_requests_total\{[^}]*plugin=\"hello-rust\"[^}]*status=\"200\"[^}]*\} (\d+)", text, re.M) or \
    re.search(r"^toru_plugin_requests_total\{[^}]*status=\"200\"[^}]*plugin=\"hello-rust\"[^}]*\} (\d+)", text, re.M)
print(m.group(1) if m else 0)'
}
greetings() {
    curl -sf -H "$auth" "$toru/plugins/hello-rust/stats" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["greetings"])'
}
m0=$(served)
g0=$(greetings)
wrk -t"$THREADS" -c"$CHECK_CONNECTIONS" -d"$CHECK_DURATION" -H "$auth" "$toru/plugins/hello-rust/" \
    >"$work/check.txt"
g1=$(greetings)
m1=$(served)
cat "$work/check.txt"
python3 - "$work/check.txt" "$CHECK_CONNECTIONS" "$m0" "$g0" "$g1" "$m1" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
conns, m0, g0, g1, m1 = (int(v) for v in sys.argv[2:])
got = int(re.search(r"(\d+) requests in", text).group(1))
plugin = g1 - g0
# The two GET /stats calls were forwarded too.
server = m1 - m0 - 2
print(f"wrk got {got} answers; the plugin answered {plugin} greetings; toru-server counted {server} 200s")
problems = []
if "Non-2xx" in text:
    problems.append("some answers were not 2xx")
if "Socket errors" in text:
    problems.append("socket errors or timeouts: " + re.search(r"Socket errors:.*", text).group(0))
if not got <= server <= plugin:
    problems.append("the counts disagree (expected wrk <= toru-server <= plugin)")
if plugin - got > conns:
    problems.append(f"{plugin - got} more greetings than answers, with at most {conns} in flight at the end")
if problems:
    print("no-loss check FAILED:", "; ".join(problems))
    sys.exit(1)
print(f"no-loss check passed: none lost or answered twice ({plugin - got} in flight when wrk stopped)")
EOF
