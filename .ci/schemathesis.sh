#!/usr/bin/env bash
# Fuzzes the public API against its own OpenAPI document with schemathesis: every response must
# be a documented status with a conforming body, schema-valid requests must be accepted and
# schema-invalid ones rejected, and nothing may answer 5xx. A fresh node (temporary data dir, free
# port, a random cluster secret) with one collection is the target. Internal endpoints (/raft/*,
# /cluster/{join,leave,promote,read_index}) are not in the document and not fuzzed.
# positive_data_acceptance runs as .ci/schemathesis_hooks.py's variant, which lets through only
# the two 400s that depend on stored data (a vector's dimension, a min_index past the log).
#
# Usage: .ci/schemathesis.sh [QUIVER_BINARY]   (default target/debug/quiver)
# Needs `schemathesis` on PATH (.ci/run installs the pinned version into target/ci-venv).
# Reproducible and bounded: fixed seed and example count (override with ST_SEED, ST_EXAMPLES).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/quiver}
seed=${ST_SEED:-20261129}
examples=${ST_EXAMPLES:-60}

work=$(mktemp -d)
node_pid=
cleanup() {
    if [ -n "$node_pid" ]; then kill "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
secret=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
QUIVER_LOG=warn "$bin" serve --data-dir "$work/data" --listen "127.0.0.1:$port" \
    --cluster-secret "$secret" >"$work/node.log" 2>&1 &
node_pid=$!

# A collection for the endpoints to hit; the first create also waits out the first election.
created=
for _ in $(seq 1 100); do
    if curl -fsS -X PUT "$url/collections/docs" -H 'content-type: application/json' \
        -d '{"dim": 4, "metric": "cosine"}' >/dev/null 2>&1; then
        created=1
        break
    fi
    kill -0 "$node_pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$created" ]; then
    echo "the node did not accept a collection; its log:" >&2
    cat "$work/node.log" >&2
    exit 1
fi
curl -fsS -X PUT "$url/collections/docs/points" -H 'content-type: application/json' -d '{"points": [
    {"id": 1, "vector": [1, 0, 0, 0], "payload": {"lang": "en"}},
    {"id": "a", "vector": [0, 1, 0, 0], "payload": {"lang": "de"}}]}' >/dev/null

started=$SECONDS
status=0
# Run from the temporary dir, so that schemathesis' cache does not land in the work tree.
hooks="$PWD/.ci/schemathesis_hooks.py"
(cd "$work" && SCHEMATHESIS_HOOKS="$hooks" schemathesis run "$url/openapi.json" \
    --checks all \
    --exclude-checks positive_data_acceptance \
    --max-examples "$examples" \
    --seed "$seed" \
    --workers 2 \
    --generation-database none \
    --request-timeout 20 \
    --no-color \
    --exclude-path-regex '^/(raft/|cluster/(join|leave|promote|read_index))' \
    ) || status=$?
echo "schemathesis: exit $status in $((SECONDS - started)) s"
if ! kill -0 "$node_pid" 2>/dev/null; then
    echo "the node died during the run; its log:" >&2
    tail -n 50 "$work/node.log" >&2
    status=1
fi
exit "$status"
