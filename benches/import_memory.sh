#!/bin/bash
# The memory of a node as users run it: `quiver serve` with default flags as its own process,
# fed by `quiver import --wait-indexed`, its resident size sampled every 0.5 s from /proc, and
# its VmHWM (peak) and VmRSS read 45 s after the import.
#
#   benches/import_memory.sh BINARY FILE.fvecs [QUANTIZATION] [COUNT]
#   e.g. cargo build --release && quiver derive --count 1000000 --out /tmp/1m.fvecs &&
#        benches/import_memory.sh target/release/quiver /tmp/1m.fvecs int8
set -euo pipefail
BIN=$1
FILE=$2
QUANT=${3:-none}
COUNT=${4:-100000000}
PORT=${PORT:-7391}
DIR=$(mktemp -d)
trap 'kill $NODE 2>/dev/null || true; rm -rf "$DIR"' EXIT

"$BIN" serve --data-dir "$DIR/data" --listen "127.0.0.1:$PORT" > "$DIR/serve.log" 2>&1 &
NODE=$!
sleep 1.5
(while kill -0 $NODE 2>/dev/null; do
    awk '/VmRSS/ { print $2 }' /proc/$NODE/status
    sleep 0.5
done) > "$DIR/rss.log" 2>/dev/null &
START=$(date +%s.%N)
"$BIN" import --url "http://127.0.0.1:$PORT" -c big --create cosine --quantization "$QUANT" \
    --file "$FILE" --limit "$COUNT" --wait-indexed | tail -2
END=$(date +%s.%N)
sleep 45
echo "import and indexing: $(echo "$END - $START" | bc) s"
grep -E 'VmHWM|VmRSS' /proc/$NODE/status
sort -n "$DIR/rss.log" | tail -1 | awk '{ printf "largest sampled VmRSS: %d kB\n", $1 }'
