#!/usr/bin/env bash
# Packs the GPU kit: one archive that runs the CUDA checks on a machine with an NVIDIA GPU, PyTorch (its libtorch),
# CMake and a C++ compiler, but no .NET SDK and no NuGet. Usage:
#
#   scripts/gpu/pack.sh [OUT_DIR]        # default OUT_DIR: runs/gpu-kit; the last line printed is the archive's path
#
# The archive (kit/ inside) holds:
#   app/               framework-dependent publish of the CLI for linux-x64, built with no libtorch (TorchBackend=none;
#                      the device supplies PyTorch's libtorch, and run.sh builds TorchSharp's native binding against it)
#   dotnet/            the .NET runtime the app needs, copied from this SDK's shared folder (host + Microsoft.NETCore.App)
#   torchsharp-native/ TorchSharp's native-binding sources (src/Native: LibTorchSharp) at exactly the TorchSharp version
#                      the app references, from a local mirror of the TorchSharp repository (see TORCHSHARP_REPO below)
#   fixtures/          the golden fixtures (tests/SoftPrompt.Tests/fixtures/hf-reference)
#   demo/              with KIT_DEMO=1: the demo's model, task files and configs (else run.sh takes them from the checkout)
#   scripts/           run.sh (the device entry point), bench_peft.py, bench_pytorch.py
#   MANIFEST.json      versions, commits, sizes
# Environment: TORCHSHARP_REPO = a git clone (or bare mirror) of github.com/dotnet/TorchSharp (default:
# ~/.cache/softprompt/TorchSharp, made with `git clone https://github.com/dotnet/TorchSharp ~/.cache/softprompt/TorchSharp`).
# KIT_NATIVE_SOURCES=0 packs no native sources (a kit for the CPU rehearsal only: run.sh on a GPU then refuses to start
# unless --skip-build finds a binding already built; CI packs this way, having no TorchSharp clone).
# KIT_LEAN=1 leaves out fixtures/ too (run.sh then takes them from the checkout it runs in): what a device call carries
# is the checkout plus the archive, 64 MiB together. XZ_OPT sets the compression (default -9e -T2; CI uses -0).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
OUT_DIR=${1:-runs/gpu-kit}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

TS_VERSION=$(sed -n 's:.*<TorchSharpVersion>\(.*\)</TorchSharpVersion>.*:\1:p' Directory.Build.props)
LT_VERSION=$(sed -n 's:.*<LibTorchVersion>\(.*\)</LibTorchVersion>.*:\1:p' Directory.Build.props)
# TorchSharp tags no release in its repository after v0.106.0. v0.107.0 was published from this commit ("Update release
# notes (#1565)", 2026-05-07 09:44 UTC; the package's files are dated 10:03 UTC that day): its build/BranchInfo.props
# says 0.107.0, and the C exports declared in its src/Native match the exported symbols of the package's
# libLibTorchSharp.so (checked below when the package is in the NuGet cache).
declare -A TS_COMMITS=([0.107.0]=c20b6a1cc574d690707638a488d2583f3b8b983f)
TS_REF=${TORCHSHARP_REF:-${TS_COMMITS[$TS_VERSION]:-v$TS_VERSION}}
TS_REPO=${TORCHSHARP_REPO:-${XDG_CACHE_HOME:-$HOME/.cache}/softprompt/TorchSharp}
NATIVE_SOURCES=${KIT_NATIVE_SOURCES:-1}

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
KIT=$STAGE/kit
mkdir -p "$KIT"/{app,dotnet,scripts}
log() { echo "pack: $*" >&2; }

# 1. TorchSharp's native sources, first (the cheapest step to fail).
if [ "$NATIVE_SOURCES" = "0" ]; then
  TS_COMMIT=none; symbols_check="no native sources (KIT_NATIVE_SOURCES=0: CPU rehearsal only)"
  log "no TorchSharp native sources (KIT_NATIVE_SOURCES=0): this kit can rehearse on the CPU, not build the binding on a GPU"
elif ! git -C "$TS_REPO" rev-parse -q --verify "$TS_REF^{commit}" >/dev/null 2>&1; then
  if [ -d "$TS_REPO" ]; then why="$TS_REPO has no commit $TS_REF (git -C $TS_REPO fetch origin, or set TORCHSHARP_REF)"; else why="no clone at $TS_REPO"; fi
  echo "error: TorchSharp $TS_VERSION native sources: $why; run \`git clone https://github.com/dotnet/TorchSharp $TS_REPO\` or set TORCHSHARP_REPO to a clone (KIT_NATIVE_SOURCES=0 packs a CPU-rehearsal kit without them)." >&2
  exit 2
fi
if [ "$NATIVE_SOURCES" != "0" ]; then
TS_COMMIT=$(git -C "$TS_REPO" rev-parse "$TS_REF^{commit}")
branch_version=$(git -C "$TS_REPO" show "$TS_COMMIT:build/BranchInfo.props" | tr -d ' \r\n' | sed -n 's:.*<MajorVersion>\([0-9]*\)</MajorVersion><MinorVersion>\([0-9]*\)</MinorVersion><PatchVersion>\([0-9]*\)</PatchVersion>.*:\1.\2.\3:p')
if [ "$branch_version" != "$TS_VERSION" ]; then
  echo "error: TorchSharp commit $TS_COMMIT is version '$branch_version', the app references $TS_VERSION." >&2; exit 2
fi
mkdir -p "$KIT/torchsharp-native"
git -C "$TS_REPO" archive "$TS_COMMIT" src/Native LICENSE.txt THIRD-PARTY-NOTICES.TXT 2>/dev/null | tar -x -C "$KIT/torchsharp-native" \
  || git -C "$TS_REPO" archive "$TS_COMMIT" src/Native | tar -x -C "$KIT/torchsharp-native"
pkg_so="${NUGET_PACKAGES:-$HOME/.nuget/packages}/torchsharp/$TS_VERSION/runtimes/linux-x64/native/libLibTorchSharp.so"
symbols_check="not checked (no $pkg_so or no nm)"
if [ -f "$pkg_so" ] && command -v nm >/dev/null; then
  nm -D --defined-only "$pkg_so" | awk '$2=="T" && $3 ~ /^TH/ {print $3}' | sort -u > "$STAGE/so.txt"
  cat "$KIT"/torchsharp-native/src/Native/LibTorchSharp/*.h | grep -oE 'EXPORT_API\([^)]*\)\s*[A-Za-z_0-9]+\s*\(' \
    | sed -E 's/.*\)\s*([A-Za-z_0-9]+)\s*\($/\1/' | grep '^TH' | sort -u > "$STAGE/src.txt"
  missing=$(comm -23 "$STAGE/so.txt" "$STAGE/src.txt" | wc -l)
  if [ "$missing" -ne 0 ]; then
    echo "error: $missing symbols exported by the TorchSharp $TS_VERSION package are not declared in the sources at $TS_COMMIT:" >&2
    comm -23 "$STAGE/so.txt" "$STAGE/src.txt" | head >&2; exit 2
  fi
  symbols_check="all $(wc -l < "$STAGE/so.txt") TH* exports of the package's libLibTorchSharp.so are declared in these sources"
fi
log "TorchSharp $TS_VERSION native sources from $TS_COMMIT ($symbols_check)"
fi

# 2. Framework-dependent publish of the CLI, without libtorch, from a clean copy of the sources (the working tree's
#    bin/obj and its restore state are left alone).
#    The projects copied are the CLI's project-reference closure, read from the .csproj files (so a new project the CLI
#    references is packed without editing this script).
mkdir -p "$STAGE/src"
mapfile -t PROJECTS < <(python3 - "$REPO" src/SoftPrompt.Cli/SoftPrompt.Cli.csproj <<'PY'
import os, sys, xml.etree.ElementTree as ET
root, seen, todo = sys.argv[1], [], [sys.argv[2]]
while todo:
    proj = os.path.normpath(todo.pop())
    if proj in seen: continue
    if not os.path.isfile(os.path.join(root, proj)): sys.exit(f"pack: {proj}: referenced project not found")
    seen.append(proj)
    for ref in ET.parse(os.path.join(root, proj)).getroot().iter():
        if ref.tag.split('}')[-1] == 'ProjectReference' and ref.get('Include'):
            todo.append(os.path.join(os.path.dirname(proj), ref.get('Include').replace('\\', '/')))
for p in seen:
    d = os.path.dirname(p)
    if d.startswith('..') or os.path.isabs(d): sys.exit(f"pack: {p}: a referenced project outside the checkout")
    print(d)
PY
)
[ "${#PROJECTS[@]}" -ge 2 ] || { echo "error: pack: could not read the CLI's project references" >&2; exit 1; }
log "projects: ${PROJECTS[*]}"
tar -C "$REPO" --exclude=bin --exclude=obj -cf - "${PROJECTS[@]}" build Directory.Build.props Directory.Build.targets global.json \
  | tar -x -C "$STAGE/src"
log "dotnet publish (framework-dependent, linux-x64, TorchBackend=none) ..."
dotnet publish "$STAGE/src/src/SoftPrompt.Cli" -c Release -r linux-x64 --self-contained false -p:TorchBackend=none \
  -p:UseAppHost=true -o "$KIT/app" -nologo -v q >&2
# The TorchSharp package's own binding is built for libtorch $LT_VERSION from NuGet; run.sh replaces it with one built
# against the device's libtorch. Keep it for the CPU rehearsal only if asked (it is 3 MB).
[ -f "$KIT/app/libLibTorchSharp.so" ] || { echo "error: the publish has no libLibTorchSharp.so (TorchSharp package layout changed?)" >&2; exit 1; }
rm -f "$KIT"/app/*.pdb "$KIT"/app/.libtorchsharp-glibcxx-*.stamp

# 3. The .NET runtime the app needs (framework-dependent apps run with DOTNET_ROOT pointing at it): the host, and each
#    shared framework its runtimeconfig.json names (Microsoft.NETCore.App, and Microsoft.AspNetCore.App for the server),
#    read from that file rather than listed here; of their assemblies only those the app can bind (the transitive
#    closure of its assemblies' references over those frameworks, computed by fxclosure.cs). The host skips framework
#    files that are absent.
DOTNET_HOME=$(dirname "$(readlink -f "$(command -v dotnet)")")
mapfile -t FRAMEWORKS < <(python3 -c 'import json,sys; [print(f["name"], f["version"]) for f in json.load(open(sys.argv[1]))["runtimeOptions"].get("frameworks") or [json.load(open(sys.argv[1]))["runtimeOptions"]["framework"]]]' "$KIT/app/softprompt.runtimeconfig.json")
[ "${#FRAMEWORKS[@]}" -ge 1 ] || { echo "error: pack: no frameworks in the app's runtimeconfig.json" >&2; exit 1; }
cp -a "$DOTNET_HOME/dotnet" "$DOTNET_HOME/host" "$KIT/dotnet/"
cp -a "$DOTNET_HOME"/LICENSE.txt "$DOTNET_HOME"/ThirdPartyNotices.txt "$KIT/dotnet/" 2>/dev/null || true
FX_DIRS=(); fx_note=""
for fw in "${FRAMEWORKS[@]}"; do
  read -r fw_name fw_version <<< "$fw"
  FX_DIR=$(ls -d "$DOTNET_HOME/shared/$fw_name/${fw_version%%.*}".* 2>/dev/null | sort -V | tail -1)
  [ -n "$FX_DIR" ] || { echo "error: pack: the app needs $fw_name $fw_version, which is not under $DOTNET_HOME/shared" >&2; exit 1; }
  FX_DIRS+=("$FX_DIR")
  FX_OUT=$KIT/dotnet/shared/$fw_name/$(basename "$FX_DIR")
  mkdir -p "$FX_OUT"
  cp -a "$FX_DIR"/*.json "$FX_OUT/"
  cp -a "$FX_DIR"/*.so "$FX_OUT/" 2>/dev/null || true
  if [ "${KIT_FULL_FRAMEWORK:-0}" = "1" ]; then cp -a "$FX_DIR"/*.dll "$FX_OUT/"; fi
done
# Not needed to run: debugger and dump support, the alternative GCs, LTTng tracing (about 7 MB).
rm -f "$KIT"/dotnet/shared/Microsoft.NETCore.App/*/{createdump,libmscordbi.so,libmscordaccore.so,libclrgc.so,libclrgcexp.so,libcoreclrtraceptprovider.so}
if [ "${KIT_FULL_FRAMEWORK:-0}" = "1" ]; then
  fx_note="all assemblies"
else
  # fxclosure.cs prints the full paths of the framework assemblies to keep.
  (cd "$STAGE" && dotnet run "$REPO/scripts/gpu/fxclosure.cs" -- "$KIT/app" "${FX_DIRS[@]}") > "$STAGE/closure.txt"
  grep -q '/System.Private.CoreLib.dll$' "$STAGE/closure.txt" || { echo "error: fxclosure.cs gave no closure" >&2; exit 1; }
  while read -r f; do cp -a "$f" "$KIT/dotnet/shared/${f#"$DOTNET_HOME/shared/"}"; done < "$STAGE/closure.txt"
  total=0; for d in "${FX_DIRS[@]}"; do total=$((total + $(ls "$d"/*.dll | wc -l))); done
  fx_note="$(wc -l < "$STAGE/closure.txt") of $total assemblies (the app's reference closure; KIT_FULL_FRAMEWORK=1 ships all)"
fi
FX_DIR=${FX_DIRS[0]}
log ".NET runtime from $DOTNET_HOME: ${FRAMEWORKS[*]} -> $(printf '%s ' "${FX_DIRS[@]##*/shared/}"): $fx_note"

# 4. Fixtures, demo files, scripts. The demo (model, task, configs: 24 MB) only with KIT_DEMO=1: a device call carries
#    the checkout anyway, and run.sh takes what the kit lacks from the checkout it runs in. KIT_LEAN=1 leaves the
#    fixtures out too (they are in the checkout as well).
if [ "${KIT_LEAN:-0}" != "1" ]; then
  mkdir -p "$KIT/fixtures"
  cp -a tests/SoftPrompt.Tests/fixtures/hf-reference "$KIT/fixtures/"
fi
if [ "${KIT_DEMO:-0}" = "1" ]; then
  mkdir -p "$KIT/demo/models" "$KIT/demo/data/tasks" "$KIT/demo/configs"
  cp -a models/sp-llama-6m "$KIT/demo/models/"
  cp -a data/tasks/word_sentiment_seen.train.tsv data/tasks/word_sentiment_seen.test.tsv "$KIT/demo/data/tasks/"
  cp -a configs/demo-prompt.json configs/demo-prefix.json configs/demo-eval.json "$KIT/demo/configs/"
fi
cp -a scripts/gpu/run.sh scripts/gpu/bench_peft.py scripts/bench_pytorch.py "$KIT/scripts/"
ln -s scripts/run.sh "$KIT/run.sh"

GIT_COMMIT=$(git rev-parse HEAD)$(git diff --quiet HEAD -- src scripts || echo "+dirty")
cat > "$KIT/MANIFEST.json" <<JSON
{
  "softprompt_commit": "$GIT_COMMIT",
  "packed_utc": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "torchsharp_version": "$TS_VERSION",
  "torchsharp_native_commit": "$TS_COMMIT",
  "projects": "${PROJECTS[*]}",
  "torchsharp_native_check": "$symbols_check",
  "libtorch_version_of_nuget_build": "$LT_VERSION",
  "dotnet_runtime": "$(basename "$FX_DIR")",
  "dotnet_framework_files": "$fx_note",
  "fixtures": $([ "${KIT_LEAN:-0}" = "1" ] && echo false || echo true),
  "demo": $([ "${KIT_DEMO:-0}" = "1" ] && echo true || echo false)
}
JSON

# 5. One archive, under the 64 MiB a device call carries (together with the checkout: see docs/benchmarks.md).
NAME=softprompt-gpu-kit-$(git rev-parse --short HEAD).tar.xz
XZ_OPT=${XZ_OPT:--9e -T2} tar -C "$STAGE" -cJf "$OUT_DIR/$NAME" kit
size=$(stat -c %s "$OUT_DIR/$NAME")
log "$(du -sh "$KIT" | cut -f1) unpacked; archive $((size / 1048576)) MiB ($size bytes)"
if [ "$size" -ge $((64 * 1048576)) ]; then echo "error: $OUT_DIR/$NAME is over 64 MiB" >&2; exit 1; fi
echo "$OUT_DIR/$NAME"
