#!/usr/bin/env bash
# Reproduces the project's small pretrained model (models/sp-llama-6m) on a new machine:
#   task splits -> tokenizer -> token cache -> pretraining (resumable) -> export to a Hugging Face folder.
# Usage: scripts/pretrain.sh [RUN_DIR]       (default RUN_DIR=../pretrain-run, outside the repo)
# Environment: CORPUS (default ../shared/data/corpus), TASKS_SRC (default ../shared/data/tasks),
#              MAX_MINUTES (stop training after this many minutes, 0 = to the token budget; rerun to resume),
#              TOTAL_TOKENS (token budget where the cosine schedule reaches its minimum; default 50000000),
#              INIT_FROM (an exported model folder to continue from when RUN_DIR has no checkpoint),
#              NICE (default 19), THREADS (default 2).
# Stop a run cleanly with Ctrl-C, `kill -TERM <pid>`, or `touch RUN_DIR/run/STOP`; it checkpoints and exits.
set -euo pipefail

# The body is a function, so bash reads the whole file before running: editing or checking out this script while a
# long run started from it is still going cannot change what that run does next.
main() {
  cd "$(dirname "$0")/.."
  REPO=$(pwd)
  RUN=${1:-../pretrain-run}
  CORPUS=${CORPUS:-../shared/data/corpus}
  TASKS_SRC=${TASKS_SRC:-../shared/data/tasks}
  MAX_MINUTES=${MAX_MINUTES:-0}
  NICE=${NICE:-19}
  THREADS=${THREADS:-2}
  NAME=sp-llama-6m
  mkdir -p "$RUN"
  RUN=$(cd "$RUN" && pwd)

  if [ -f "$RUN/run/LOCK" ] && kill -0 "$(cat "$RUN/run/LOCK")" 2>/dev/null; then
    echo "a pretraining run is in progress in $RUN/run (pid $(cat "$RUN/run/LOCK")): touch $RUN/run/STOP to stop it first" >&2
    exit 1
  fi

  dotnet build src/SoftPrompt.Cli -c Release -v q -nologo
  # Run from a copy of the build so that rebuilding the repo does not disturb a long run.
  rm -rf "$RUN/bin" && cp -r src/SoftPrompt.Cli/bin/Release/net10.0 "$RUN/bin"
  SP=(nice -n "$NICE" dotnet "$RUN/bin/softprompt.dll" pretrain)

  # 1. Deterministic train/test split of the tasks (committed in data/tasks; recreated only if missing).
  [ -f data/tasks/fine_foods.train.tsv ] || "${SP[@]}" split-tasks --source "$TASKS_SRC" --out data/tasks
  #    The demo's word task: the lexicon words the pretraining text uses at least 30 times (a small model cannot know
  #    the polarity of a word it has hardly read); same split. Derived from the corpus only, never from the model.
  [ -f data/tasks/word_sentiment_seen.train.tsv ] || "${SP[@]}" seen-words --corpus "$CORPUS" --tasks data/tasks \
    --task word_sentiment_bing_liu --name word_sentiment_seen --min-count 30

  # 2. Byte-level BPE on the training documents (vocab 4096; 6144 and 8192 written for comparison).
  [ -f "$RUN/tokenizers/vocab-4096/tokenizer.json" ] || "${SP[@]}" tokenizer --corpus "$CORPUS" --tasks data/tasks --out "$RUN/tokenizers" --vocab 4096,6144,8192

  # 3. Tokenize once: RUN/data/{train,val}.bin (uint16).
  [ -f "$RUN/data/train.bin" ] || "${SP[@]}" prepare --corpus "$CORPUS" --tasks data/tasks --tokenizer "$RUN/tokenizers/vocab-4096" --out "$RUN/data"

  # 4. Pretrain (resumes from RUN/run/checkpoint.safetensors when present; options then come from RUN/run/options.json).
  #    OMP_WAIT_POLICY=PASSIVE: on a shared machine, spinning OpenMP threads waste the CPU they wait for.
  #    INIT_FROM=models/NAME continues from an exported model when the run folder has no checkpoint (a new session).
INIT=()
if [ -n "${INIT_FROM:-}" ]; then INIT=(--init-from "$INIT_FROM"); fi
OMP_WAIT_POLICY=PASSIVE "${SP[@]}" train --data "$RUN/data" --run "$RUN/run" "${INIT[@]}" \
    --hidden 256 --layers 6 --heads 4 --intermediate 768 --seq-len 256 --micro-batch 16 --accum 2 --compute bf16 --threads "$THREADS" \
    --total-tokens "${TOTAL_TOKENS:-50000000}" --warmup-tokens 1000000 --lr 1.5e-3 --min-lr 1.5e-4 --eval-every 100 --checkpoint-minutes 4 \
    --max-minutes "$MAX_MINUTES"

  # 5. Export the checkpoint as a Hugging Face folder with its card, evaluated in fp32.
  "${SP[@]}" export --run "$RUN/run" --data "$RUN/data" --tokenizer "$RUN/tokenizers/vocab-4096" --out "models/$NAME" \
    --slice tests/SoftPrompt.Tests/fixtures/shipped-model/heldout_slice.txt --plot docs/pretraining-perplexity.png --notes docs/pretraining-notes.json
  echo "models/$NAME"
}
main "$@"; exit  # one line: bash has read the exit before main runs, so editing this file mid-run is harmless
