#!/usr/bin/env bash
# The offline demo, end to end on the shipped small model (models/sp-llama-6m):
#   1. prompt tuning and 2. prefix tuning on the word-sentiment task (data/tasks, train split),
#   3. a gradient-guided hard-prompt search on the same data,
#   4. an OPRO hard-prompt search (offline: the shipped model proposes instructions for itself),
#   5. evaluation of every condition (zero-shot, instructions, few-shot, soft prompt, prefix, projected, searched x2)
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

rm -rf "$RUNS/prompt" "$RUNS/prefix" "$RUNS/search" "$RUNS/opro"
echo "== 1/5 prompt tuning" >&2
"${SP[@]}" train --config configs/demo-prompt.json --output "$RUNS/prompt" "${QUICK[@]}" "$@" >&2
echo "== 2/5 prefix tuning" >&2
"${SP[@]}" train --config configs/demo-prefix.json --output "$RUNS/prefix" "${QUICK[@]}" "$@" >&2
echo "== 3/5 hard-prompt search" >&2
SEARCH_QUICK=()
if [ "${DEMO_QUICK:-0}" = "1" ]; then SEARCH_QUICK=(--steps 2 --eval-every 1 --score-examples 16); fi
"${SP[@]}" search-hard-prompt --config configs/demo-search.json --output "$RUNS/search" "${SEARCH_QUICK[@]}" "$@" >&2
echo "== 4/5 OPRO hard-prompt search (offline)" >&2
OPRO_QUICK=()
if [ "${DEMO_QUICK:-0}" = "1" ]; then OPRO_QUICK=(--steps 1 --candidates-per-step 2 --score-examples 16); fi
"${SP[@]}" search-hard-prompt --config configs/demo-opro.json --output "$RUNS/opro" "${OPRO_QUICK[@]}" "$@" >&2
echo "== 5/5 evaluation" >&2
EVAL_QUICK=()
if [ "${DEMO_QUICK:-0}" = "1" ]; then EVAL_QUICK=(--max-examples 40); fi
"${SP[@]}" eval --config configs/demo-eval.json --output "$RUNS/report" \
  --prompt "$RUNS/prompt/adapter" --prompt "$RUNS/prefix/adapter" --searched "$RUNS/search" --searched "$RUNS/opro" \
  --run "$RUNS/prompt" --run "$RUNS/prefix" "${EVAL_QUICK[@]}" "$@"
