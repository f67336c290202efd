#!/usr/bin/env bash
# The GPU kit's entry point, run on the device from the checkout's root after unpacking the archive that
# scripts/gpu/pack.sh made:
#
#   tar -xJf runs/gpu-kit/softprompt-gpu-kit-*.tar.xz -C /tmp && /tmp/kit/run.sh
#
# In one pass (planned for under 10 minutes on an H200):
#   0. builds TorchSharp's native binding (the kit's LibTorchSharp sources) against the machine's libtorch
#      (PyTorch's, found with python3 -c 'import torch; print(torch.utils.cmake_prefix_path)'), and points TorchSharp
#      at that libtorch (LD_LIBRARY_PATH);
#   a. golden fidelity on CUDA for every architecture fixture (plain, soft-prompt and prefix forwards, the prompt's loss
#      and gradient, greedy generation): fp32 within 1e-4, bf16 within 5e-2 (softprompt golden);
#   b. trains the demo task (prompt and prefix tuning of models/sp-llama-6m) on CUDA and on the CPU of the same machine,
#      and evaluates both on the held-out test words: accuracies side by side;
#   c. softprompt bench --device cuda and the same workloads through transformers + PEFT (get_peft_model with
#      PromptTuningConfig / PrefixTuningConfig), prompt and prefix, bf16, GPT-2-small and Llama-3.2-1B shapes with random
#      weights: tokens/s, step time, peak GPU memory (bench_peft.py);
#   d. writes everything to $OUT/gpu-report.json (rewritten after every step, so a run cut short still reports what
#      it did), with every step's output and log in $OUT/logs.tar.gz and the progress in $OUT/run.log: three files, as
#      the device tool brings back at most eight.
# Options: --cpu-rehearsal (no GPU: the CPU libtorch of a local build stands in for the device's, SOFTPROMPT_CPU_NATIVES
# = the folder holding libtorch_cpu.so and a libLibTorchSharp.so built for it; every step runs on the CPU, smaller),
# --skip-build (reuse $BUILD_DIR's binding), --skip-bench, --skip-demo.
set -uo pipefail
KIT=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
REPO=${SOFTPROMPT_REPO:-$PWD}
OUT=${OUT:-$PWD/gpu-out}
BUILD_DIR=${BUILD_DIR:-/tmp/libtorchsharp-build}
REHEARSAL=0; SKIP_BUILD=0; SKIP_BENCH=0; SKIP_DEMO=0
for a in "$@"; do
  case $a in
    --cpu-rehearsal) REHEARSAL=1 ;; --skip-build) SKIP_BUILD=1 ;; --skip-bench) SKIP_BENCH=1 ;; --skip-demo) SKIP_DEMO=1 ;;
    *) echo "run.sh: unknown option $a" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
WORK=$(mktemp -d)
S=$WORK/state  # every step's output and log; $OUT gets the report and a tarball of this
mkdir -p "$S"
START=$(date +%s)
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/run.log" >&2; }
step_rc() { echo "{\"step\": \"$1\", \"rc\": $2, \"seconds\": $3}" >> "$S/steps.jsonl"; }
publish() { python3 "$KIT/scripts/bench_peft.py" --report "$S" > /dev/null 2>&1; cp "$S/gpu-report.json" "$OUT/" 2>/dev/null; tar -czf "$OUT/logs.tar.gz" -C "$S" . 2>/dev/null; }
run_step() { # name, command...: runs it, output and log to $S/NAME.out|log, records rc and time, publishes
  local name=$1; shift; local t0=$(date +%s)
  log "step $name: $*"
  "$@" > "$S/$name.out" 2> "$S/$name.log"; local rc=$?
  step_rc "$name" "$rc" "$(( $(date +%s) - t0 ))"
  [ $rc -eq 0 ] || log "step $name FAILED (rc $rc): $(tail -3 "$S/$name.log" | tr '\n' ' ')"
  publish
  return $rc
}
: > "$S/steps.jsonl"

export DOTNET_ROOT=$KIT/dotnet DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
# .NET needs ICU for culture data; without it, run culture-invariant (the app formats numbers invariantly anyway).
if ! ldconfig -p 2>/dev/null | grep 'libicuuc\.so' > /dev/null; then export DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1; log "no ICU: DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1"; fi
SP=$KIT/app/softprompt
FIXTURES=$KIT/fixtures/hf-reference; [ -d "$FIXTURES" ] || FIXTURES=$REPO/tests/SoftPrompt.Tests/fixtures/hf-reference
DEMO=$KIT/demo; [ -d "$DEMO/models/sp-llama-6m" ] || DEMO=$REPO
cp "$KIT/MANIFEST.json" "$S/manifest.json" 2>/dev/null

# 0. The native binding.
if [ $REHEARSAL = 1 ]; then
  DEV=cpu
  NATIVES=${SOFTPROMPT_CPU_NATIVES:-$REPO/src/SoftPrompt.Cli/bin/Release/net10.0/runtimes/linux-x64/native}
  [ -f "$NATIVES/libtorch_cpu.so" ] || { log "rehearsal: no libtorch_cpu.so in $NATIVES (set SOFTPROMPT_CPU_NATIVES)"; exit 2; }
  cp "$NATIVES/libLibTorchSharp.so" "$KIT/app/libLibTorchSharp.so"
  export LD_LIBRARY_PATH=$NATIVES${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  log "rehearsal on the CPU: libtorch from $NATIVES (the native build step is not rehearsed)"
else
  DEV=cuda
  TORCH_CMAKE=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)') || { log "python3 cannot import torch"; exit 2; }
  TORCH_LIB=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))' > "$S/torch.txt" 2>&1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$S/gpu.txt" 2>&1
  log "$(cat "$S/torch.txt") | $(cat "$S/gpu.txt")"
  if [ $SKIP_BUILD = 0 ] || [ ! -f "$BUILD_DIR/LibTorchSharp/libLibTorchSharp.so" ]; then
    [ -d "$KIT/torchsharp-native/src/Native" ] || { log "this kit has no TorchSharp native sources (packed with KIT_NATIVE_SOURCES=0, for the CPU rehearsal): pack it again with a TorchSharp clone (TORCHSHARP_REPO, see pack.sh)"; exit 2; }
    SRC=$WORK/native; cp -a "$KIT/torchsharp-native/src/Native" "$SRC"
    # TorchSharp builds with -Werror; a newer libtorch's headers may warn (deprecations), which must not stop this build.
    sed -i 's/^\(\s*add_definitions(-Werror)\)/# \1/' "$SRC/CMakeLists.txt"
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}   # Hopper; Torch's CMake config asks (the binding has no CUDA code)
    command -v nvcc >/dev/null && export CUDACXX=${CUDACXX:-$(command -v nvcc)}
    run_step native_configure cmake -S "$SRC" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_CMAKE" \
      -DLIBTORCH_PATH="$TORCH_CMAKE/Torch" -DCMAKE_CXX_FLAGS="-Wno-error -w" || exit 1
    run_step native_build cmake --build "$BUILD_DIR" -j "$(nproc)" || exit 1
  fi
  cp "$BUILD_DIR/LibTorchSharp/libLibTorchSharp.so" "$KIT/app/libLibTorchSharp.so"
  export LD_LIBRARY_PATH=$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
THREADS=$(nproc)

# a. Golden fidelity.
run_step golden_fp32 "$SP" golden --fixtures "$FIXTURES" --device $DEV --dtype fp32 --format json --threads "$THREADS"
run_step golden_bf16 "$SP" golden --fixtures "$FIXTURES" --device $DEV --dtype bf16 --format json --threads "$THREADS"

# b. The demo task on the GPU and on the CPU (the CPU run in the background while the GPU one runs; it uses half the
#    cores, so the GPU process keeps the rest for launching kernels).
QUICK=(); EVAL_QUICK=()
[ $REHEARSAL = 1 ] && { QUICK=(--steps 4 --eval-every 2); EVAL_QUICK=(--max-examples 40); }  # the rehearsal checks the plumbing only
demo_run() { # device threads
  local d=$1 t=$2 dir=$WORK/demo-$1
  (cd "$DEMO" && "$SP" train --config configs/demo-prompt.json --device "$d" --threads "$t" --output "$dir/prompt" "${QUICK[@]}" \
    && "$SP" train --config configs/demo-prefix.json --device "$d" --threads "$t" --output "$dir/prefix" "${QUICK[@]}" \
    && "$SP" eval --model models/sp-llama-6m --data data/tasks/word_sentiment_seen.test.tsv --columns input,output \
       --prompt-template $'Word: {input}\nSentiment:' --label-words positive=good --label-words negative=bad \
       --prompt "$dir/prompt/adapter" --prompt "$dir/prefix/adapter" --device "$d" --threads "$t" --output "$dir/report" --format json "${EVAL_QUICK[@]}") \
  && cp "$dir/prompt/summary.json" "$S/demo_${d}_prompt_summary.json" && cp "$dir/prefix/summary.json" "$S/demo_${d}_prefix_summary.json" \
  && cp "$dir/report/metrics.json" "$S/demo_${d}_metrics.json"
}
if [ $SKIP_DEMO = 0 ]; then
  if [ $DEV = cuda ]; then
    ( run_step demo_cpu demo_run cpu $(( THREADS / 2 )) ) &
    CPU_PID=$!
    run_step demo_cuda demo_run cuda 2
    wait $CPU_PID
  else
    run_step demo_cpu demo_run cpu "$THREADS"
  fi
fi

# c. bench: softprompt and transformers + PEFT on the same workloads, one after the other.
if [ $SKIP_BENCH = 0 ]; then
  if [ $DEV = cuda ]; then
    run_step bench python3 "$KIT/scripts/bench_peft.py" --softprompt "$SP" --device cuda --dtype bf16 --out "$S/bench.jsonl" --publish "$OUT"
  else
    run_step bench python3 "$KIT/scripts/bench_peft.py" --softprompt "$SP" --device cpu --dtype bf16 --rehearsal --out "$S/bench.jsonl" --publish "$OUT"
  fi
fi

# e. Data parallel on two GPUs (docs/distributed.md), when the machine has two and Open MPI's mpirun: the demo's prompt
#    tuning for 20 steps on one GPU, then as 2 ranks (mpirun -np 2, each rank on cuda:<local rank>); the adapters must
#    agree within 1e-5 and both runs' tokens/s are recorded. Skipped, saying why, otherwise. The CPU rehearsal runs the
#    same check on the CPU (4 steps, 1 thread per rank) so that the step itself is exercised on every change (CI).
dp_check() {
  local dir=$WORK/dp steps=20 threads=2
  if [ $DEV = cpu ]; then steps=4; threads=1; fi
  (cd "$DEMO" && "$SP" train --config configs/demo-prompt.json --device $DEV --threads $threads --steps $steps --eval-every $((steps / 2)) --output "$dir/one" \
    && OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe -np 2 "$SP" train --config configs/demo-prompt.json \
       --device $DEV --threads $threads --steps $steps --eval-every $((steps / 2)) --output "$dir/two") || return 1
  # Pure Python (no numpy needed): the adapters' fp32 tensors, compared element by element.
  python3 - "$dir/one" "$dir/two" > "$S/dp_2ranks.json" <<'PY'
import array, json, struct, sys
def load(run):
    raw = open(run + "/adapter/adapter_model.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]; head = json.loads(raw[8:8 + n]); body = raw[8 + n:]
    out = {}
    for k, v in head.items():
        if k == "__metadata__": continue
        if v["dtype"] != "F32": sys.exit(f"{run}: {k} is {v['dtype']}, expected F32")
        out[k] = array.array("f", body[v["data_offsets"][0]:v["data_offsets"][1]])
    return out
a, b = load(sys.argv[1]), load(sys.argv[2])
if sorted(a) != sorted(b): sys.exit(f"different tensors: {sorted(a)} vs {sorted(b)}")
diff = max(max(abs(x - y) for x, y in zip(a[k], b[k])) for k in a)
s1, s2 = (json.load(open(r + "/summary.json")) for r in sys.argv[1:3])
tps = lambda s: round(s["tokens_seen"] / s["elapsed_s"], 1)
ok = diff <= 1e-5 and s1["adapter_step"] == s2["adapter_step"]
print(json.dumps({"max_abs_diff": diff, "same_step": s1["adapter_step"] == s2["adapter_step"], "ok": ok,
                  "tokens_per_s_1process": tps(s1), "tokens_per_s_2ranks": tps(s2)}))
sys.exit(0 if ok else 1)
PY
}
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
if ! command -v mpirun > /dev/null; then
  log "step dp skipped: no mpirun (install Open MPI: apt-get install openmpi-bin)"
elif [ $DEV = cpu ]; then
  run_step dp_2ranks_cpu dp_check
elif [ "${GPUS:-0}" -ge 2 ]; then
  run_step dp_2gpu dp_check
else
  log "step dp_2gpu skipped: needs 2 GPUs (found ${GPUS:-0})"
fi

# d. One JSON (published after every step; once more with the last lines of the log).
log "done in $(( $(date +%s) - START ))s: $OUT/gpu-report.json"
publish
python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["goals"]))' "$OUT/gpu-report.json"
rm -rf "$WORK"
