# Sourced by the load scripts (run.sh, streams.sh) after their `cargo build --release`: sets
# `bin` (the release folder) and `work` (a temporary folder), stops every process whose pid is
# in `pids` and removes `work` on exit, and defines `url_from`.

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
