#!/usr/bin/env bash
# The chat fan-out of `relaychat-bench signaling` against the Node original (js-chat-server,
# public repository nothsaaaa/js-chat-server, MIT), for the side-by-side row of BENCHMARKS.md.
#
#   bench/original_fanout.sh ORIGINAL_DIR BENCH_BIN [extra relaychat-bench signaling args] > OUT_JSON
#
# ORIGINAL_DIR is a checkout with node_modules installed (`npm ci`), as `node app.js` runs it.
# The tree is copied to a temp dir (the original keeps settings.json, chat.db and accounts.db
# beside app.js), so every run starts from an empty history like relaychat's. Its settings are
# the defaults it writes itself, except the limits that would refuse a load generator on one
# address, set to what scripts/bench gives relaychat:
#   totalMaxConnections 20000, maxTotalConnections (per IP) 20000, maxConnectionsPerWindow
#   1000000, maxMessagesPerSecond 1000000, churnGuard off.
# Both servers then do the same work per chat message: parse, store in SQLite, send one frame to
# every session. Voice stays off (its default; the original calls it unfinished), so only the
# fan-out is measured (`--offers 0 --joins 0`), with the same 1,000 listeners and 20 senders.
# Prints JSON on stdout: the bench report, or {"skipped": "why"} when the original cannot run
# here; progress goes to stderr.
set -euo pipefail
orig=$1 bench=$2
shift 2

skip() {
  python3 -c 'import json,sys; print(json.dumps({"skipped": sys.argv[1]}))' "$1"
  echo "original: skipped: $1" >&2
  exit 0
}
[ -f "$orig/app.js" ] || skip "no js-chat-server checkout at $orig (set RELAYCHAT_BENCH_ORIGINAL)"
[ -d "$orig/node_modules" ] || skip "$orig has no node_modules (run npm ci there)"
command -v node >/dev/null 2>&1 || skip "node is not installed"

tmp=$(mktemp -d /tmp/relaychat-original.XXXXXX)
node_pid=""
cleanup() {
  [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
  if [ "${KEEP_TMP:-0}" = 1 ]; then echo "original's logs kept in $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# Copy (symlinks kept: the checkout links the two lower-case utils), without its state.
tar -C "$orig" --exclude=./.git --exclude=./settings.json --exclude=./chat.db --exclude=./accounts.db \
  -cf - . | tar -C "$tmp" -xf -
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 - "$tmp/settings.json" "$port" <<'PY'
import json, sys
path, port = sys.argv[1], int(sys.argv[2])
settings = {
    "authentication": False, "nickChangeCooldown": 30000,
    "maxMessagesPerSecond": 1000000,
    "connectionWindowMs": 30000, "maxConnectionsPerWindow": 1000000,
    "maxTotalConnections": 20000, "totalMaxConnections": 20000,
    "serverName": "My Chat Server", "port": port,
    "motd": "Welcome to the chat! Be respectful and have fun.",
    "heartbeatInterval": 30000, "heartbeatTimeout": 120000,
    "wss": {"enabled": False, "key": "certs/key.pem", "cert": "certs/cert.pem"},
    "webrtc": {"enabled": False, "maxParticipants": 8, "allowVideo": False,
               "allowScreenShare": False, "forceRelay": True},
    "churnGuard": {"enabled": False, "windowMs": 300000, "maxCycles": 5, "blockDurationMs": 600000},
}
with open(path, "w") as f:
    json.dump(settings, f, indent=2)
PY
# It listens on every address; the port was free a moment ago.
(cd "$tmp" && exec node app.js > "$tmp/node.log" 2>&1) &
node_pid=$!
for _ in $(seq 1 100); do
  ss -H -tln "sport = :$port" | grep -q . && break
  kill -0 "$node_pid" 2>/dev/null || { tail -20 "$tmp/node.log" >&2; skip "node app.js exited at start"; }
  sleep 0.1
done
echo "js-chat-server pid $node_pid (node $(node --version)), ws://127.0.0.1:$port" >&2
"$bench" --threads 2 signaling --url "ws://127.0.0.1:$port" --sessions 1002 --listeners 1000 --senders 20 \
  --offers 0 --joins 0 --hold-secs 0 --server-pid "$node_pid" --label js-chat-server --prefix o --json "$@"
