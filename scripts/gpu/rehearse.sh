#!/usr/bin/env bash
# Rehearses the GPU kit on this (CPU) machine: packs it (KIT_LEAN=1 by default, as a device call carries it), unpacks
# it into a temp folder, runs `inspect` with the packaged .NET runtime only (the host's trace must show the kit's
# runtime and no other), then `run.sh --cpu-rehearsal` with this checkout's CPU libtorch standing in for the device's.
# Needs a Release build (dotnet build -c Release) for the CPU libtorch.
#   scripts/gpu/rehearse.sh [OUT_DIR]          the whole rehearsal: golden, the demo, the bench (about 8 minutes on 2 busy cores)
#   scripts/gpu/rehearse.sh --fast [OUT_DIR]   what CI runs on every change (.ci/run): packs with fast compression, then
#                                             inspect on the kit's runtime and the golden checks only (about 2-3 minutes)
# Without a TorchSharp clone (TORCHSHARP_REPO, see pack.sh) the kit is packed without the native sources
# (KIT_NATIVE_SOURCES=0), which the CPU rehearsal does not use. Output in OUT_DIR (default runs/gpu-rehearsal):
# gpu-report.json, logs.tar.gz, run.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
FAST=0
if [ "${1:-}" = "--fast" ]; then FAST=1; shift; fi
OUT=${1:-runs/gpu-rehearsal}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
ts_repo=${TORCHSHARP_REPO:-${XDG_CACHE_HOME:-$HOME/.cache}/softprompt/TorchSharp}
if [ -z "${KIT_NATIVE_SOURCES:-}" ] && [ ! -d "$ts_repo" ]; then
  echo "rehearse: no TorchSharp clone at $ts_repo: packing without the native sources (the CPU rehearsal does not build them)" >&2
  export KIT_NATIVE_SOURCES=0
fi
[ $FAST = 1 ] && export XZ_OPT=${XZ_OPT:--0 -T2}
archive=$(KIT_LEAN=${KIT_LEAN:-1} scripts/gpu/pack.sh "$OUT/kit" | tail -1)
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$archive" "$T"
DOTNET_ROOT=$T/kit/dotnet COREHOST_TRACE=1 COREHOST_TRACEFILE=$T/host.txt "$T/kit/app/softprompt" inspect --model models/sp-llama-6m
grep -q "dir=\[$T/kit/dotnet/shared/Microsoft.NETCore.App/" "$T/host.txt" || { echo "rehearse: the app did not run on the kit's runtime" >&2; exit 1; }
if grep -q '/usr/share/dotnet/shared' "$T/host.txt"; then echo "rehearse: the app touched the system's runtime" >&2; exit 1; fi
echo "rehearse: inspect ran on the kit's .NET runtime" >&2
if [ $FAST = 1 ]; then
  OUT=$OUT "$T/kit/run.sh" --cpu-rehearsal --skip-demo --skip-bench
  # run.sh records every step's exit code; a failed golden step fails the rehearsal.
  python3 - "$OUT/gpu-report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
steps = r.get("steps") or []
bad = [s for s in steps if s.get("rc") != 0]
if not steps or bad: sys.exit(f"rehearse: failed steps: {bad or 'none recorded'}")
print(f"rehearse: {len(steps)} steps passed: {', '.join(s['step'] for s in steps)}", file=sys.stderr)
PY
else
  OUT=$OUT "$T/kit/run.sh" --cpu-rehearsal
fi
