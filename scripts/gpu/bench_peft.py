#!/usr/bin/env python3
"""The GPU kit's benchmark and report (scripts/gpu/run.sh calls it).

Bench: for each workload (GPT-2-small and Llama-3.2-1B shapes with random weights; prompt and prefix tuning; bf16 frozen
weights, fp32 trainable prompt; loss on every position), runs `softprompt bench --device cuda` and then the same
workload through Hugging Face transformers + PEFT (scripts/bench_pytorch.py: get_peft_model with PromptTuningConfig /
PrefixTuningConfig, torch.optim.AdamW, one loss.item() per step), each in its own process, one after the other on the
same GPU. Both report median step time and real tokens/s (after warm-up steps). Peak GPU memory: the driver's figure
(NVML / nvidia-smi device memory in use, minus what was in use before the process started; it includes the CUDA
context and the allocator's cache, on both sides alike), and on the PyTorch side also torch.cuda.max_memory_allocated
(TorchSharp 0.107 does not expose the allocator's statistics).

    bench_peft.py --softprompt KIT/app/softprompt --device cuda --dtype bf16 --out OUT/bench.jsonl
    bench_peft.py --report OUT        # gathers OUT's step outputs into OUT/gpu-report.json
"""
import argparse, json, os, shutil, subprocess, sys, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = [  # shape, batch, seq, steps, warmup
    ("gpt2-small", 16, 256, 20, 5),
    ("llama-1b", 8, 256, 15, 5),
]
REHEARSAL_WORKLOADS = [("gpt2-small", 1, 32, 2, 1)]


class GpuMemory:
    """Polls the device memory in use (NVML when importable, else nvidia-smi) and keeps the peak."""

    def __init__(self, device_index=0):
        self.peak = None
        self._stop = threading.Event()
        self._read = None
        try:
            import pynvml
            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            self._read = lambda: pynvml.nvmlDeviceGetMemoryInfo(h).used
            self.source = "NVML device memory used"
        except Exception:
            def smi():
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", str(device_index)],
                                     capture_output=True, text=True, timeout=10).stdout
                return int(out.strip().splitlines()[0]) * 2**20
            try:
                smi()
                self._read = smi
                self.source = "nvidia-smi memory.used"
            except Exception:
                self.source = "unavailable"

    def __enter__(self):
        if self._read:
            self.baseline = self._read()
            self.peak = self.baseline
            self._t = threading.Thread(target=self._poll, daemon=True)
            self._t.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._read())
            except Exception:
                pass
            time.sleep(0.02)

    def __exit__(self, *exc):
        if self._read:
            self._stop.set()
            self._t.join()

    @property
    def used(self):
        return None if self.peak is None else self.peak - self.baseline


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in the output")


def run_side(name, cmd, gpu):
    t0 = time.time()
    mem = GpuMemory() if gpu else None
    try:
        if mem:
            with mem:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        else:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            raise RuntimeError(f"exit {p.returncode}: {(p.stderr or p.stdout).strip()[-600:]}")
        r = last_json(p.stdout)
        r.pop("side", None)
        r["ok"] = True
    except Exception as e:  # recorded, and the next workload runs
        r = {"ok": False, "error": str(e)[-800:]}
    r["wall_s"] = round(time.time() - t0, 1)
    if mem:
        r["gpu_memory_peak_bytes_driver"] = mem.used
        r["gpu_memory_driver_source"] = mem.source
    r["command"] = " ".join(cmd)
    return r


def bench(a):
    gpu = a.device.startswith("cuda")
    rows = []
    for shape, batch, seq, steps, warmup in (REHEARSAL_WORKLOADS if a.rehearsal else WORKLOADS):
        for method in ("prompt", "prefix"):
            common = ["--shape", shape, "--method", method, "--batch", str(batch), "--seq", str(seq), "--virtual-tokens", "20",
                      "--steps", str(steps), "--warmup", str(warmup), "--dtype", a.dtype, "--device", a.device]
            cs = run_side("softprompt", [a.softprompt, "bench", *common, "--format", "json"] + (["--threads", "2"] if a.rehearsal else []), gpu)
            py = run_side("peft", [sys.executable, os.path.join(HERE, "bench_pytorch.py"), *common] + (["--threads", "2"] if a.rehearsal else []), gpu)
            row = {"shape": shape, "method": method, "batch": batch, "seq": seq, "dtype": a.dtype, "device": a.device, "softprompt": cs, "peft": py}
            if cs.get("ok") and py.get("ok"):
                row["tokens_per_s_ratio"] = round(cs["tokens_per_s"] / py["tokens_per_s"], 3)
                row["step_ms_ratio"] = round(cs["step_ms_median"] / py["step_ms_median"], 3)
                if cs.get("gpu_memory_peak_bytes_driver") and py.get("gpu_memory_peak_bytes_driver"):
                    row["gpu_memory_ratio_driver"] = round(cs["gpu_memory_peak_bytes_driver"] / py["gpu_memory_peak_bytes_driver"], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            if a.publish:  # keep the device's $OUT current, in case the run is cut short
                state = os.path.dirname(os.path.abspath(a.out))
                report(state, quiet=True)
                shutil.copy(os.path.join(state, "gpu-report.json"), a.publish)


def read_json(path):
    try:
        with open(path) as f:
            text = f.read()
        try:
            return json.loads(text)
        except ValueError:
            return last_json(text)  # a command's output: its last JSON line
    except Exception as e:
        return {"missing": os.path.basename(path), "error": str(e)}


def report(out, quiet=False):
    r = {"generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for name in ("manifest.json",):
        r["kit"] = read_json(os.path.join(out, name))
    for name in ("torch.txt", "gpu.txt"):
        p = os.path.join(out, name)
        if os.path.exists(p):
            r[name[:-4]] = open(p).read().strip()
    p = os.path.join(out, "steps.jsonl")
    r["steps"] = [json.loads(l) for l in open(p)] if os.path.exists(p) else []
    r["golden"] = {k: read_json(os.path.join(out, f"golden_{k}.out")) for k in ("fp32", "bf16") if os.path.exists(os.path.join(out, f"golden_{k}.out"))}
    demo = {}
    for dev in ("cuda", "cpu"):
        m = os.path.join(out, f"demo_{dev}_metrics.json")
        if os.path.exists(m):
            demo[dev] = {"eval": read_json(m),
                         "prompt_summary": read_json(os.path.join(out, f"demo_{dev}_prompt_summary.json")),
                         "prefix_summary": read_json(os.path.join(out, f"demo_{dev}_prefix_summary.json"))}
    r["demo"] = demo
    acc = {dev: {c["name"]: c["metrics"].get("accuracy") for c in d["eval"].get("conditions", [])} for dev, d in demo.items()}
    if acc:
        r["demo_accuracy"] = acc  # per condition and device: the CUDA run against the CPU run of the same kit
        if "cuda" in acc and "cpu" in acc:
            r["demo_accuracy_cuda_minus_cpu"] = {k: round(v - acc["cpu"][k], 4) for k, v in acc["cuda"].items() if v is not None and acc["cpu"].get(k) is not None}
    p = os.path.join(out, "bench.jsonl")
    r["bench"] = [json.loads(l) for l in open(p)] if os.path.exists(p) else []
    goals = {}
    ratios = [b["tokens_per_s_ratio"] for b in r["bench"] if "tokens_per_s_ratio" in b]
    if ratios:
        goals["tokens_per_s_vs_peft_min"] = min(ratios)
        goals["tokens_per_s_goal_1.2x_met"] = min(ratios) >= 1.2
    mems = [b["gpu_memory_ratio_driver"] for b in r["bench"] if "gpu_memory_ratio_driver" in b]
    if mems:
        goals["gpu_memory_vs_peft_max"] = max(mems)
        goals["gpu_memory_goal_le_peft_met"] = max(mems) <= 1.0
    if r["golden"]:
        goals["golden_pass"] = {k: v.get("Pass") for k, v in r["golden"].items()}
    r["goals"] = goals
    with open(os.path.join(out, "gpu-report.json"), "w") as f:
        json.dump(r, f, indent=1)
    if not quiet:
        print(json.dumps(goals))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--softprompt")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--out", default="bench.jsonl")
    p.add_argument("--publish", metavar="DIR", help="after each workload, also write the report of --out's folder to DIR")
    p.add_argument("--rehearsal", action="store_true", help="one tiny workload (CPU rehearsal of the kit)")
    p.add_argument("--report", metavar="OUT_DIR", help="gather OUT_DIR's step outputs into OUT_DIR/gpu-report.json and stop")
    a = p.parse_args()
    if a.report:
        return report(a.report)
    if not a.softprompt:
        p.error("--softprompt is required for the benchmark")
    bench(a)


if __name__ == "__main__":
    sys.exit(main())
