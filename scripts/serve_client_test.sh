#!/usr/bin/env bash
# A real third-party client against `softprompt serve`: the official `openai` npm package (scripts/serve-client).
# Makes two small adapters for the shipped model (prompt tuning and prefix tuning, a few training steps each),
# serves them on a free loopback port, runs scripts/serve-client/client_test.mjs, then stops the server with SIGTERM
# and checks it exits 0. Without node/npm it says so and exits 0. Offline once the npm package is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "serve client test: skipped (node and npm not found)"; exit 0
fi
BIN=src/SoftPrompt.Cli/bin/Release/net10.0/softprompt
[ -x "$BIN" ] || dotnet build src/SoftPrompt.Cli/SoftPrompt.Cli.csproj -c Release -v q >/dev/null
if [ ! -d scripts/serve-client/node_modules/openai ]; then
  if ! (cd scripts/serve-client && npm ci --no-audit --no-fund --loglevel=error); then
    echo "serve client test: skipped (npm could not install the openai package: offline?)"; exit 0
  fi
fi
TMP=$(mktemp -d)
SERVER=""
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
for m in prompt prefix; do
  "$BIN" train --config configs/demo-$m.json --steps 3 --warmup-steps 0 --eval-every 0 --threads 1 --output "$TMP/$m" >/dev/null 2>"$TMP/$m.log" \
    || { cat "$TMP/$m.log"; exit 1; }
done
"$BIN" serve --model models/sp-llama-6m --adapter sentiment="$TMP/prompt/adapter" --adapter sentiment-prefix="$TMP/prefix/adapter" \
  --port 0 --threads 1 >"$TMP/serve.out" 2>"$TMP/serve.err" &
SERVER=$!
for _ in $(seq 1 240); do grep -q "^listening on " "$TMP/serve.out" && break; kill -0 $SERVER 2>/dev/null || break; sleep 0.5; done
URL=$(sed -n 's/^listening on //p' "$TMP/serve.out")
[ -n "$URL" ] || { echo "serve did not start:"; cat "$TMP/serve.err"; exit 1; }
node scripts/serve-client/client_test.mjs "$URL/v1"
kill -TERM $SERVER
rc=0; wait $SERVER || rc=$?
SERVER=""
[ "$rc" -eq 0 ] || { echo "serve exited $rc after SIGTERM"; cat "$TMP/serve.err"; exit 1; }
echo "serve client test: passed (server drained and exited 0)"
