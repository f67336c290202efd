#!/usr/bin/env bash
# The offline demo, end to end on the shipped small model (models/sp-llama-6m):
#   1. prompt tuning and 2. prefix tuning on the word-sentiment task (data/tasks, train split),
#   3. a gradient-guided hard-prompt search on the same data,
#   4. evaluation of every condition (zero-shot, instructions, few-shot, soft prompt, prefix, projected, searched)
#      on the held-out test words, with a report folder (metrics.json, report.md, predictions.jsonl, charts).
# The last line printed is the report folder. Settings live in configs/demo-*.json; extra arguments go to every
# softprompt command (e.g. scripts/demo.sh --threads 1). DEMO_QUICK=1 runs a few steps only (used by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${DEMO_RUNS:-runs/demo}
QUICK=()
if [ "${DEMO_QUICK:-0}" = "1" ]; then QUICK=(--steps 4 --eval-every 2); fi

echo "== building (Release)" >&2
dotnet build src/SoftPrompt.Cli -c Release -nologo -v q >&2
SP=(dotnet src/SoftPrompt.Cli/bin/Release/net10.0/softprompt.dll)

rm -rf "$RUNS/prompt" "$RUNS/prefix" "$RUNS/search"
echo "== 1/4 prompt tuning" >&2
"${SP[@]}" train --config configs/demo-prompt.json --output "$RUNS/prompt" "${QUICK[@]}" "$@" >&2
echo "== 2/4 prefix tuning" >&2
"${SP[@]}" train --config configs/demo-prefix.json --output "$RUNS/prefix" "${QUICK[@]}" "$@" >&2
echo "== 3/4 hard-prompt search" >&2
SEARCH_QUICK=()
if [ "${DEMO_QUICK:-0}" = "1" ]; then SEARCH_QUICK=(--steps 2 --eval-every 1 --score-examples 16); fi
"${SP[@]}" search-hard-prompt --config configs/demo-search.json --output "$RUNS/search" "${SEARCH_QUICK[@]}" "$@" >&2
echo "== 4/4 evaluation" >&2
EVAL_QUICK=()
if [ "${DEMO_QUICK:-0}" = "1" ]; then EVAL_QUICK=(--max-examples 40); fi
"${SP[@]}" eval --config configs/demo-eval.json --output "$RUNS/report" \
  --prompt "$RUNS/prompt/adapter" --prompt "$RUNS/prefix/adapter" --searched "$RUNS/search" \
  --run "$RUNS/prompt" --run "$RUNS/prefix" "${EVAL_QUICK[@]}" "$@"
