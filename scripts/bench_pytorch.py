#!/usr/bin/env python3
"""The `softprompt bench` workload in PyTorch eager, side by side with the C# one, in one run.

Same shapes, same step (prompt or prefix tuning on a frozen random-weight model: forward, loss on the target
positions, backward, AdamW on the prompt only), same timing rules (median over --steps after --warmup, one host
sync per step). Uses Hugging Face transformers + PEFT when installed (the real PEFT code path); otherwise a
minimal GPT-2 / Llama written below (Debian's python3-torch has neither library).

    scripts/bench_pytorch.py --shape gpt2-small --batch 4 --seq 128 --softprompt src/SoftPrompt.Cli/bin/Release/net10.0/softprompt

prints both results as JSON lines, then the ratios (C# / PyTorch tokens per second, and peak memory).
"""
import argparse, contextlib, json, math, os, resource, statistics, subprocess, sys, time


def _blas_threads_from_argv(argv):
    """--threads, read before torch is imported: Debian's torch (BLAS_INFO=generic) does not pass set_num_threads on
    to OpenBLAS, which reads OPENBLAS_NUM_THREADS once when it loads (measured: --threads 1 used 2 cores for matmuls)."""
    for i, x in enumerate(argv):
        if x == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if x.startswith("--threads="):
            return x.split("=", 1)[1]
    return None


_t = _blas_threads_from_argv(sys.argv[1:])
if _t and _t.isdigit() and int(_t) > 0:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", _t)

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES = {  # the same table as src/SoftPrompt/Models/ModelFactory.cs
    "gpt2-small": dict(kind="gpt2", hidden=768, layers=12, heads=12, kv=12, inter=3072, vocab=50257),
    "gpt2-medium": dict(kind="gpt2", hidden=1024, layers=24, heads=16, kv=16, inter=4096, vocab=50257),
    "smollm2-135m": dict(kind="llama", hidden=576, layers=30, heads=9, kv=3, inter=1536, vocab=49152, theta=100000.0),
    "smollm2-360m": dict(kind="llama", hidden=960, layers=32, heads=15, kv=5, inter=2560, vocab=49152, theta=100000.0),
    "tinyllama-1.1b": dict(kind="llama", hidden=2048, layers=22, heads=32, kv=4, inter=5632, vocab=32000, theta=10000.0),
    "llama-1b": dict(kind="llama", hidden=2048, layers=16, heads=32, kv=8, inter=8192, vocab=128256, theta=500000.0),
    "llama-3b": dict(kind="llama", hidden=3072, layers=28, heads=24, kv=8, inter=8192, vocab=128256, theta=500000.0),
    "llama-8b": dict(kind="llama", hidden=4096, layers=32, heads=32, kv=8, inter=14336, vocab=128256, theta=500000.0),
}


def attention(q, k, v, causal_offset):
    """q [B,H,T,d], k/v [B,H,S,d]; query t sees keys <= causal_offset + t."""
    if hasattr(F, "scaled_dot_product_attention") and causal_offset == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    T, S = q.shape[2], k.shape[2]
    att = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = torch.arange(S, device=q.device)[None, :] <= (torch.arange(T, device=q.device)[:, None] + causal_offset)
    att = att.masked_fill(~mask, float("-inf"))
    return att.softmax(-1) @ v


class MiniLM(nn.Module):
    """GPT-2 or Llama (RMSNorm, RoPE, GQA, SwiGLU, tied head), random init N(0, 0.02), frozen."""

    def __init__(self, s):
        super().__init__()
        self.s = s
        H, I, V, L = s["hidden"], s["inter"], s["vocab"], s["layers"]
        self.hd = H // s["heads"]
        self.wte = nn.Embedding(V, H)
        self.gpt2 = s["kind"] == "gpt2"
        if self.gpt2:
            self.wpe = nn.Embedding(1024, H)
        self.blocks = nn.ModuleList()
        for _ in range(L):
            b = nn.Module()
            if self.gpt2:
                b.ln1, b.ln2 = nn.LayerNorm(H), nn.LayerNorm(H)
                b.qkv, b.o = nn.Linear(H, 3 * H), nn.Linear(H, H)
                b.fc, b.proj = nn.Linear(H, I), nn.Linear(I, H)
            else:
                b.ln1, b.ln2 = nn.Parameter(torch.ones(H)), nn.Parameter(torch.ones(H))
                kvd = s["kv"] * self.hd
                b.q, b.k, b.v, b.o = nn.Linear(H, H, bias=False), nn.Linear(H, kvd, bias=False), nn.Linear(H, kvd, bias=False), nn.Linear(H, H, bias=False)
                b.gate, b.up, b.down = nn.Linear(H, I, bias=False), nn.Linear(H, I, bias=False), nn.Linear(I, H, bias=False)
            self.blocks.append(b)
        self.lnf = nn.LayerNorm(H) if self.gpt2 else nn.Parameter(torch.ones(H))
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, 0, 0.02)
        if not self.gpt2:
            d = self.hd
            self.register_buffer("inv_freq", 1.0 / (s["theta"] ** (torch.arange(0, d, 2).float() / d)), persistent=False)

    def rms(self, x, w):
        xf = x.float()
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)

    def rope(self, x, pos):
        ang = pos.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat([ang, ang], -1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        h = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., h:], x[..., :h]], -1) * sin

    def forward(self, embeds, past=None, out_kv=None):
        """embeds [B,T,H]; past: per layer (k, v) [B,kv,P,d] (prefix, or the cache while generating); out_kv: a list that
        receives each layer's (k, v) with past included (the cache for the next step). Returns final hidden [B,T,H]."""
        B, T, H = embeds.shape
        P = 0 if past is None else past[0][0].shape[2]
        pos = torch.arange(P, P + T, device=embeds.device)
        h = embeds + (self.wpe(pos)[None] if self.gpt2 else 0)
        nh, kvh, d = self.s["heads"], self.s["kv"], self.hd
        for i, b in enumerate(self.blocks):
            x = b.ln1(h) if self.gpt2 else self.rms(h, b.ln1)
            if self.gpt2:
                q, k, v = b.qkv(x).view(B, T, 3, nh, d).permute(2, 0, 3, 1, 4)
            else:
                q = self.rope(b.q(x).view(B, T, nh, d).transpose(1, 2), pos)
                k = self.rope(b.k(x).view(B, T, kvh, d).transpose(1, 2), pos)
                v = b.v(x).view(B, T, kvh, d).transpose(1, 2)
            if past is not None:
                k = torch.cat([past[i][0].expand(B, -1, -1, -1), k], 2)
                v = torch.cat([past[i][1].expand(B, -1, -1, -1), v], 2)
            if out_kv is not None:
                out_kv.append((k, v))
            if nh != kvh:
                k = k.repeat_interleave(nh // kvh, 1)
                v = v.repeat_interleave(nh // kvh, 1)
            y = attention(q, k, v, P).transpose(1, 2).reshape(B, T, H)
            h = h + b.o(y)
            x = b.ln2(h) if self.gpt2 else self.rms(h, b.ln2)
            h = h + (b.proj(F.gelu(b.fc(x), approximate="tanh")) if self.gpt2 else b.down(F.silu(b.gate(x)) * b.up(x)))
        return self.lnf(h) if self.gpt2 else self.rms(h, self.lnf)


def peak_memory(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda allocator peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS (ru_maxrss)"


def blas_info():
    """BLAS_INFO from the build; Debian's torch says 'generic' and then uses whatever libblas.so.3 the system points at
    (the reference netlib BLAS by default: ~2 GFLOP/s, which makes any comparison meaningless)."""
    cfg = torch.__config__.show()
    info = next((part.split("=", 1)[1] for part in cfg.replace(",", " ").split() if part.startswith("BLAS_INFO=")), "unknown")
    if info == "generic":
        lib = "?"
        try:
            with open("/proc/self/maps") as f:
                lib = next((l.split()[-1] for l in f if "libblas" in l or "openblas" in l), "?")
        except OSError:
            pass
        info = f"generic ({lib})"
    return info


def run_torch(a):
    device = torch.device(a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    s = SHAPES[a.shape]
    torch.manual_seed(a.seed)
    impl = "minimal"
    try:
        if a.minimal:
            raise ImportError
        import transformers, peft  # noqa: F401
        impl = "transformers+peft"
    except ImportError:
        pass
    n, B, T = a.virtual_tokens, a.batch, a.seq
    targets = T - 1 if a.target_tokens == 0 else a.target_tokens
    ids = torch.randint(0, s["vocab"], (B, T), device=device)
    labels = ids.clone()
    labels[:, : T - targets] = -100

    if impl == "transformers+peft":
        from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
        from peft import PromptTuningConfig, PrefixTuningConfig, get_peft_model, TaskType
        # Random weights are made on the target device (a 1B model's init on the CPU takes longer than its benchmark);
        # torch < 2.0 has no device context: build on the CPU and move.
        with (device if hasattr(device, "__enter__") else contextlib.nullcontext()):
            if s["kind"] == "gpt2":
                cfg = GPT2Config(n_embd=s["hidden"], n_layer=s["layers"], n_head=s["heads"], vocab_size=s["vocab"])
                base = GPT2LMHeadModel(cfg)
            else:
                cfg = LlamaConfig(hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv"],
                                  intermediate_size=s["inter"], vocab_size=s["vocab"], rope_theta=s["theta"], tie_word_embeddings=True)
                base = LlamaForCausalLM(cfg)
        base = base.to(device=device, dtype=dtype).eval()
        pcfg = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n) if a.method == "prompt" else PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n)
        model = get_peft_model(base, pcfg)
        params = [p for p in model.parameters() if p.requires_grad]
        mask = torch.ones(B, T, device=device, dtype=torch.long)

        def loss_fn():
            return model(input_ids=ids, attention_mask=mask, labels=labels).loss
    else:
        base = MiniLM(s).to(device=device, dtype=dtype).eval()
        for p in base.parameters():
            p.requires_grad_(False)
        H, L, kvd = s["hidden"], s["layers"], s["kv"] * base.hd
        if a.method == "prompt":
            prompt = nn.Parameter(base.wte.weight[torch.randint(0, s["vocab"], (n,))].detach().float().clone())
        else:
            prompt = nn.Parameter(torch.randn(n, 2 * L * kvd, device=device))
        params = [prompt]

        def loss_fn():
            emb = base.wte(ids)
            if a.method == "prompt":
                h = base(torch.cat([prompt.to(dtype)[None].expand(B, -1, -1), emb], 1))[:, n:]
            else:
                kv = prompt.to(dtype).view(n, 2 * L, s["kv"], base.hd).permute(1, 2, 0, 3)
                h = base(emb, [(kv[2 * l][None], kv[2 * l + 1][None]) for l in range(L)])
            hs, lab = h[:, :-1].reshape(-1, H), labels[:, 1:].reshape(-1)
            sel = (lab != -100).nonzero().squeeze(1)  # the head only where a loss is taken
            return F.cross_entropy((hs[sel] @ base.wte.weight.t()).float(), lab[sel])

    if a.generate:
        # Greedy decoding of --generate new tokens after a prompt of --seq tokens (batch 1) with a KV cache, as
        # `softprompt bench --generate-tokens` does (the minimal model; the prompt method is not attached).
        base = base if impl == "minimal" else MiniLM(s).to(device=device, dtype=dtype).eval()
        gen_ids = ids[:1]
        gms, gcpu = [], []
        with torch.no_grad():
            for i in range(a.warmup + a.steps):
                t0, c0 = time.perf_counter(), time.process_time()
                kv = []
                h = base(base.wte(gen_ids), None, kv)
                tok = (h[:, -1] @ base.wte.weight.t()).float().argmax(-1)
                for _ in range(a.generate - 1):
                    new = []
                    h = base(base.wte(tok[:, None]), kv, new)
                    kv = new
                    tok = (h[:, -1] @ base.wte.weight.t()).float().argmax(-1)
                tok.item()
                if i >= a.warmup:
                    gms.append((time.perf_counter() - t0) * 1000)
                    gcpu.append((time.process_time() - c0) * 1000)
        peak, kind = peak_memory(device)
        return dict(impl="minimal", torch=torch.__version__, blas=blas_info(), shape=a.shape, mode="generate", seq=T, new_tokens=a.generate,
                    dtype=a.dtype, device=str(device), threads=torch.get_num_threads(), steps=a.steps, warmup=a.warmup,
                    generate_ms_median=round(statistics.median(gms), 2), generate_tokens_per_s=round(a.generate / (statistics.median(gms) / 1000), 1),
                    generate_cpu_ms_median=round(statistics.median(gcpu), 2), peak_memory_bytes=peak, peak_memory_kind=kind)

    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    times, evals, eval_cpu = [], [], []
    for i in range(0 if a.forward_only else a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        loss.item()
        if i >= a.warmup:
            times.append((time.perf_counter() - t0) * 1000)
    with torch.no_grad():
        for i in range(a.warmup + a.steps):
            t0, c0 = time.perf_counter(), time.process_time()
            loss_fn().item()
            t1, c1 = time.perf_counter(), time.process_time()
            if i >= a.warmup:
                evals.append((t1 - t0) * 1000)
                eval_cpu.append((c1 - c0) * 1000)
    med, emed = (0.0 if a.forward_only else statistics.median(times)), statistics.median(evals)
    peak, kind = peak_memory(device)
    return dict(impl=impl, torch=torch.__version__, blas=blas_info(), shape=a.shape, method=a.method, batch=B, seq=T, virtual_tokens=n, target_tokens=targets,
                dtype=a.dtype, device=str(device), threads=torch.get_num_threads(), steps=a.steps, warmup=a.warmup,
                step_ms_median=round(med, 2), tokens_per_s=round(B * T / (med / 1000), 1) if med else 0.0, eval_ms_median=round(emed, 2),
                eval_tokens_per_s=round(B * T / (emed / 1000), 1),
                eval_cpu_ms_median=round(statistics.median(eval_cpu), 2), peak_memory_bytes=peak, peak_memory_kind=kind)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="gpt2-small", choices=sorted(SHAPES))
    p.add_argument("--method", default="prompt", choices=["prompt", "prefix"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--virtual-tokens", type=int, default=20)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--target-tokens", type=int, default=0, help="loss positions per row (0 = all)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minimal", action="store_true", help="use the minimal model even when transformers+peft are installed")
    p.add_argument("--forward-only", action="store_true", help="time only the forward-only pass (no_grad), as evaluation and serving run it")
    p.add_argument("--generate", type=int, default=0, help="time greedy generation of N new tokens (batch 1, prompt of --seq tokens) instead")
    p.add_argument("--softprompt", help="path of the softprompt executable: also run the C# side and print the ratios")
    a = p.parse_args()
    results = {}
    if a.softprompt:
        cmd = [a.softprompt, "bench", "--shape", a.shape, "--method", a.method, "--batch", str(a.batch), "--seq", str(a.seq),
               "--virtual-tokens", str(a.virtual_tokens), "--steps", str(a.steps), "--warmup", str(a.warmup), "--target-tokens", str(a.target_tokens),
               "--dtype", a.dtype, "--device", a.device, "--threads", str(a.threads), "--format", "json"] + (["--forward-only"] if a.forward_only else []) \
              + (["--generate-tokens", str(a.generate)] if a.generate else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results["softprompt"] = json.loads(out)
        print(json.dumps({"side": "softprompt", **results["softprompt"]}))
    results["pytorch"] = run_torch(a)
    if results["pytorch"]["blas"].startswith("generic") and "openblas" not in results["pytorch"]["blas"]:
        print("warning: this torch uses the system's reference BLAS (a few GFLOP/s); for a fair comparison point it at OpenBLAS, e.g. "
              "LD_LIBRARY_PATH=<dir of OpenBLAS's libblas.so.3> (Debian: libopenblas0-pthread)", file=sys.stderr)
    print(json.dumps({"side": "pytorch", **results["pytorch"]}))
    if a.softprompt and a.generate:
        cs, py = results["softprompt"], results["pytorch"]
        print(f"generate {a.generate} tokens: C# {cs['eval_ms_median']:.1f} ms vs PyTorch {py['generate_ms_median']:.1f} ms "
              f"(CPU ms {cs['eval_cpu_ms_median']:.1f} vs {py['generate_cpu_ms_median']:.1f}); peak memory C# / PyTorch: "
              f"{cs['peak_memory_bytes'] / py['peak_memory_bytes']:.2f}x ({cs['peak_memory_bytes'] / 2**20:.0f} MiB vs {py['peak_memory_bytes'] / 2**20:.0f} MiB)")
    elif a.softprompt:
        cs, py = results["softprompt"], results["pytorch"]
        print(f"ratio tokens/s (C# / PyTorch {py['impl']}): train {cs['tokens_per_s'] / py['tokens_per_s'] if py['tokens_per_s'] else float('nan'):.2f}x, "
              f"forward {cs['eval_tokens_per_s'] / py['eval_tokens_per_s']:.2f}x; forward-only ms/batch C# {cs['eval_ms_median']:.1f} vs {py['eval_ms_median']:.1f} "
              f"(C#/PyTorch {cs['eval_ms_median'] / py['eval_ms_median']:.2f}x; process CPU ms {cs.get('eval_cpu_ms_median', float('nan')):.1f} vs {py['eval_cpu_ms_median']:.1f}, "
              f"{cs.get('eval_cpu_ms_median', float('nan')) / py['eval_cpu_ms_median']:.2f}x); step time C# {cs['step_ms_median']:.1f} ms vs {py['step_ms_median']:.1f} ms")
        if cs.get("peak_memory_bytes") and py.get("peak_memory_bytes"):
            print(f"peak memory C# / PyTorch: {cs['peak_memory_bytes'] / py['peak_memory_bytes']:.2f}x ({cs['peak_memory_bytes'] / 2**20:.0f} MiB vs {py['peak_memory_bytes'] / 2**20:.0f} MiB)")


if __name__ == "__main__":
    sys.exit(main())
