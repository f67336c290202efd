#!/usr/bin/env bash
# Runs every README.md command block marked <!-- readme-check: run --> exactly as written, in order, from the
# repository root: the tool installation (dotnet pack + dotnet tool install --global) and then the examples that use
# the installed `softprompt` command. The "global" install goes into a throwaway DOTNET_CLI_HOME, so the user's own
# tools are untouched; runs/readme and nupkg are removed first. Ends with "README: N blocks ran"; exits non-zero at the
# first failing command. CI runs it; it takes about two minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export NUGET_PACKAGES="${NUGET_PACKAGES:-$HOME/.nuget/packages}"   # reuse the package cache: no download
export DOTNET_CLI_HOME="$work/home"
export DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
export PATH="$DOTNET_CLI_HOME/.dotnet/tools:$PATH"
rm -rf runs/readme nupkg

# Each marked block: the ```bash fence on the line after the marker, up to the closing fence.
awk -v dir="$work" '
  /<!-- readme-check: run -->/ { want = 1; next }
  want && /^```bash/ { n++; file = sprintf("%s/block-%02d.sh", dir, n); inside = 1; want = 0; next }
  inside && /^```/ { inside = 0; close(file); next }
  inside { print > file }
  { want = 0 }
' README.md

blocks=("$work"/block-*.sh)
[ -e "${blocks[0]}" ] || { echo "README: no blocks marked <!-- readme-check: run -->" >&2; exit 1; }
for b in "${blocks[@]}"; do
  echo "== README block $(basename "$b" .sh):" >&2
  sed 's/^/   /' "$b" >&2
  bash -euo pipefail "$b"
done
echo "README: ${#blocks[@]} blocks ran"
