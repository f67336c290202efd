#!/usr/bin/env bash
# Rehearses the GPU kit on this (CPU) machine: packs it (KIT_LEAN=1 by default, as a device call carries it), unpacks
# it into a temp folder, runs `inspect` with the packaged .NET runtime only (the host's trace must show the kit's
# runtime and no other), then `run.sh --cpu-rehearsal` with this checkout's CPU libtorch standing in for the device's.
# About 8 minutes on 2 busy cores; needs a Release build (dotnet build -c Release) for the CPU libtorch.
# Usage: scripts/gpu/rehearse.sh [OUT_DIR]   (default runs/gpu-rehearsal; gpu-report.json, logs.tar.gz, run.log)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/gpu-rehearsal}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
archive=$(KIT_LEAN=${KIT_LEAN:-1} scripts/gpu/pack.sh "$OUT/kit" | tail -1)
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$archive" "$T"
DOTNET_ROOT=$T/kit/dotnet COREHOST_TRACE=1 COREHOST_TRACEFILE=$T/host.txt "$T/kit/app/softprompt" inspect --model models/sp-llama-6m
grep -q "dir=\[$T/kit/dotnet/shared/Microsoft.NETCore.App/" "$T/host.txt" || { echo "rehearse: the app did not run on the kit's runtime" >&2; exit 1; }
if grep -q '/usr/share/dotnet/shared' "$T/host.txt"; then echo "rehearse: the app touched the system's runtime" >&2; exit 1; fi
echo "rehearse: inspect ran on the kit's .NET runtime" >&2
OUT=$OUT "$T/kit/run.sh" --cpu-rehearsal
