using SoftPrompt.IO;
using SoftPrompt.Optimization;
using TorchSharp;
using static TorchSharp.torch;

namespace SoftPrompt.Tests.Training;

public class OptimizerTests
{
    /// <summary>A small least-squares problem: loss = mean((x @ W + b - y)^2).</summary>
    sealed class Quadratic : IDisposable
    {
        public readonly Tensor X, Y;
        public Quadratic(long seed)
        {
            using var g = new torch.Generator((ulong)seed);
            X = torch.randn([16, 6], generator: g).DetachFromDisposeScope();
            Y = torch.randn([16, 4], generator: g).DetachFromDisposeScope();
        }
        public (Tensor W, Tensor B) Init(long seed)
        {
            using var g = new torch.Generator((ulong)seed);
            return (torch.randn([6, 4], generator: g).requires_grad_(true).DetachFromDisposeScope(),
                    torch.randn([4], generator: g).requires_grad_(true).DetachFromDisposeScope());
        }
        public Tensor Loss(Tensor w, Tensor b) => (X.matmul(w) + b - Y).square().mean();
        public void Dispose() { X.Dispose(); Y.Dispose(); }
    }

    static double Backward(Quadratic q, Tensor w, Tensor b)
    {
        using var scope = torch.NewDisposeScope();
        var loss = q.Loss(w, b);
        loss.backward();
        return loss.item<float>();
    }

    [Fact]
    public void AdamW_matches_torchsharp_AdamW()
    {
        using var q = new Quadratic(1);
        var (w1, b1) = q.Init(2);
        var (w2, b2) = q.Init(2);
        var pw = new TorchSharp.Modules.Parameter(w2.detach().clone());
        var pb = new TorchSharp.Modules.Parameter(b2.detach().clone());
        using var ours = new AdamW([("w", w1), ("b", b1)], beta1: 0.8, beta2: 0.99, eps: 1e-7, weightDecay: 0.05);
        using var reference = torch.optim.AdamW([pw, pb], lr: 0.05, beta1: 0.8, beta2: 0.99, eps: 1e-7, weight_decay: 0.05);
        for (int i = 0; i < 20; i++)
        {
            ours.ZeroGrad(); Backward(q, w1, b1); ours.Step(0.05);
            reference.zero_grad(); Backward(q, pw, pb); reference.step();
        }
        Assert.Equal(20, ours.StepCount);
        Assert.True(Fixtures.MaxAbsDiff(w1, pw) < 1e-6, $"W differs by {Fixtures.MaxAbsDiff(w1, pw)}");
        Assert.True(Fixtures.MaxAbsDiff(b1, pb) < 1e-6, $"b differs by {Fixtures.MaxAbsDiff(b1, pb)}");
        Assert.True(Fixtures.MaxAbsDiff(w1, w2) > 1e-2); // it did move
    }

    [Fact]
    public void Adafactor_reduces_loss_and_factors_state()
    {
        using var q = new Quadratic(3);
        var (w, b) = q.Init(4);
        using var opt = new Adafactor([("w", w), ("b", b)]);
        var state = opt.StateDict();
        Assert.Equal(new long[] { 6 }, state["w.exp_avg_sq_row"].shape);
        Assert.Equal(new long[] { 4 }, state["w.exp_avg_sq_col"].shape);
        Assert.Equal(new long[] { 4 }, state["b.exp_avg_sq"].shape);
        Assert.False(state.ContainsKey("w.exp_avg"));
        foreach (var t in state.Values) t.Dispose();
        double first = 0, last = 0;
        for (int i = 0; i < 60; i++)
        {
            opt.ZeroGrad();
            last = Backward(q, w, b);
            if (i == 0) first = last;
            opt.Step(0.05);
        }
        Assert.True(last < 0.5 * first, $"loss {first} -> {last}");

        // relative-step / scale-parameter / beta1 / weight-decay variants also descend
        var (w2, b2) = q.Init(4);
        using var opt2 = new Adafactor([("w", w2), ("b", b2)], beta1: 0.9, weightDecay: 0.01, scaleParameter: true, relativeStep: true, warmupInit: false);
        for (int i = 0; i < 60; i++) { opt2.ZeroGrad(); last = Backward(q, w2, b2); if (i == 0) first = last; opt2.Step(123.0 /* ignored */); }
        Assert.True(last < first, $"relative-step loss {first} -> {last}");
        Assert.Throws<SoftPromptException>(() => new Adafactor([("w", w2)], warmupInit: true));
    }

    [Theory]
    [InlineData("adamw")]
    [InlineData("adafactor")]
    public void State_round_trip_through_safetensors_continues_identically(string kind)
    {
        using var q = new Quadratic(5);
        using var dir = new Fixtures.TempDir();
        IPromptOptimizer Make(Tensor w, Tensor b) => kind == "adamw"
            ? new AdamW([("w", w), ("b", b)], weightDecay: 0.01)
            : new Adafactor([("w", w), ("b", b)], beta1: 0.9);
        var (wa, ba) = q.Init(6);
        using var a = Make(wa, ba);
        for (int i = 0; i < 7; i++) { a.ZeroGrad(); Backward(q, wa, ba); a.Step(0.03); }

        // checkpoint: params + optimiser state
        var sd = a.StateDict();
        SafeTensors.Save(dir["opt.safetensors"], sd);
        foreach (var t in sd.Values) t.Dispose();
        var wb = wa.detach().clone().requires_grad_(true);
        var bb = ba.detach().clone().requires_grad_(true);
        using var bOpt = Make(wb, bb);
        var loaded = SafeTensors.Load(dir["opt.safetensors"]);
        bOpt.LoadStateDict(loaded);
        Assert.Equal(7, bOpt.StepCount);

        for (int i = 0; i < 8; i++)
        {
            a.ZeroGrad(); Backward(q, wa, ba); a.Step(0.03);
            bOpt.ZeroGrad(); Backward(q, wb, bb); bOpt.Step(0.03);
        }
        Assert.Equal(0.0, Fixtures.MaxAbsDiff(wa, wb));
        Assert.Equal(0.0, Fixtures.MaxAbsDiff(ba, bb));

        // errors name the key
        loaded.Remove("w.step");
        Assert.Contains("w.step", Assert.Throws<SoftPromptException>(() => bOpt.LoadStateDict(loaded)).Message);
        var other = kind == "adamw" ? "w.exp_avg_sq_row" : "w.exp_avg_sq";
        var fresh = a.StateDict();
        fresh[other] = torch.zeros(3);
        Assert.Contains(other, Assert.Throws<SoftPromptException>(() => bOpt.LoadStateDict(fresh)).Message);
    }

    [Fact]
    public void Adafactor_matches_hand_computed_factored_update()
    {
        // Independent re-derivation in doubles of two Adafactor steps (Shazeer & Stern 2018, HF variant) on a 3x4
        // parameter with a constant gradient G (loss = sum(W * G)), first moment and weight decay on.
        const int R = 3, C = 4;
        double lr = 0.1, b1 = 0.9, wd = 0.1, eps1 = 1e-30, decay = -0.8;
        var w0 = new double[R * C];
        var gr = new double[R * C];
        for (int k = 0; k < R * C; k++) { w0[k] = 0.1 * k - 0.5; gr[k] = Math.Sin(k + 1) * (k % 3 + 1); }
        var w = (double[])w0.Clone();
        var row = new double[R]; var col = new double[C]; var m = new double[R * C];
        for (int t = 1; t <= 2; t++)
        {
            double beta2t = 1 - Math.Pow(t, decay);
            for (int r = 0; r < R; r++) { double s = 0; for (int c = 0; c < C; c++) s += gr[r * C + c] * gr[r * C + c] + eps1; row[r] = beta2t * row[r] + (1 - beta2t) * s / C; }
            for (int c = 0; c < C; c++) { double s = 0; for (int r = 0; r < R; r++) s += gr[r * C + c] * gr[r * C + c] + eps1; col[c] = beta2t * col[c] + (1 - beta2t) * s / R; }
            double rowMean = row.Average();
            var u = new double[R * C];
            for (int r = 0; r < R; r++) for (int c = 0; c < C; c++) u[r * C + c] = gr[r * C + c] / Math.Sqrt(row[r] / rowMean * col[c]);
            double rms = Math.Sqrt(u.Sum(x => x * x) / u.Length), scale = Math.Max(1, rms / 1.0);
            for (int k = 0; k < u.Length; k++) { u[k] = u[k] / scale * lr; m[k] = b1 * m[k] + (1 - b1) * u[k]; }
            for (int k = 0; k < w.Length; k++) w[k] = w[k] * (1 - wd * lr) - m[k];
        }

        var wt = torch.tensor(w0.Select(x => (float)x).ToArray(), [R, C]).requires_grad_(true);
        var gt = torch.tensor(gr.Select(x => (float)x).ToArray(), [R, C]);
        using var opt = new Adafactor([("w", wt)], beta1: b1, weightDecay: wd);
        for (int t = 0; t < 2; t++)
        {
            opt.ZeroGrad();
            using (var scope = torch.NewDisposeScope()) (wt * gt).sum().backward();
            opt.Step(lr);
        }
        var got = wt.detach().data<float>().ToArray();
        for (int k = 0; k < w.Length; k++) Assert.True(Math.Abs(got[k] - w[k]) < 1e-6, $"w[{k}]: {got[k]} vs {w[k]}");
    }

    [Fact]
    public void Optimizer_steps_leak_no_tensors()
    {
        using var q = new Quadratic(7);
        var (w, b) = q.Init(8);
        using var opt = new Adafactor([("w", w), ("b", b)], beta1: 0.9, scaleParameter: true, weightDecay: 0.01);
        using var adam = new AdamW([("w", w), ("b", b)], weightDecay: 0.01);
        void OneStep()
        {
            using var scope = torch.NewDisposeScope();
            opt.ZeroGrad();
            var loss = q.Loss(w, b);
            loss.backward();
            using var norm = GradientClipping.ClipGradNorm([w, b], 1.0);
            opt.Step(0.01);
            adam.Step(0.001);
        }
        OneStep(); // warm-up: grads get allocated
        var before = DisposeScopeManager.Statistics;
        long created0 = before.CreatedInScopeCount, disposed0 = before.DisposedInScopeCount, live0 = before.ThreadTotalLiveCount;
        for (int i = 0; i < 50; i++) OneStep();
        var after = DisposeScopeManager.Statistics;
        long created = after.CreatedInScopeCount - created0, disposed = after.DisposedInScopeCount - disposed0;
        Assert.True(created > 50, $"created {created}");
        Assert.Equal(created, disposed);
        Assert.Equal(live0, after.ThreadTotalLiveCount);
    }

    [Fact]
    public void ClipGradNorm_scales_to_max_norm_and_returns_total()
    {
        var a = torch.zeros(2).requires_grad_(true);
        var b = torch.zeros(1).requires_grad_(true);
        (a * torch.tensor(new float[] { 3, 0 })).sum().backward();
        (b * 4).sum().backward();
        using var total = GradientClipping.ClipGradNorm([a, b], 1.0);
        Assert.Equal(5.0, total.item<float>(), 5);
        Assert.Equal(new float[] { 0.6f, 0f }, a.grad!.data<float>().ToArray().Select(v => MathF.Round(v, 5)));
        Assert.Equal(0.8f, b.grad!.item<float>(), 5);
        using var again = GradientClipping.ClipGradNorm([a, b], 10.0); // below max: untouched
        Assert.Equal(0.8f, b.grad!.item<float>(), 5);
    }

    [Fact]
    public void Learning_rate_schedules()
    {
        const double lr = 0.3;
        Assert.Equal(lr, LearningRateSchedule.At("constant", 0, 100, 10, lr));
        Assert.Equal(0.0, LearningRateSchedule.At("constant_with_warmup", 0, 100, 10, lr));
        Assert.Equal(0.15, LearningRateSchedule.At("constant_with_warmup", 5, 100, 10, lr), 12);
        Assert.Equal(lr, LearningRateSchedule.At("constant_with_warmup", 50, 100, 10, lr));
        Assert.Equal(0.15, LearningRateSchedule.At("linear", 5, 100, 10, lr), 12);
        Assert.Equal(lr, LearningRateSchedule.At("linear", 10, 100, 10, lr), 12);
        Assert.Equal(0.15, LearningRateSchedule.At("linear", 55, 100, 10, lr), 12);
        Assert.Equal(0.0, LearningRateSchedule.At("linear", 100, 100, 10, lr), 12);
        Assert.Equal(0.0, LearningRateSchedule.At("linear", 150, 100, 10, lr), 12);
        Assert.Equal(lr, LearningRateSchedule.At("cosine", 10, 100, 10, lr), 12);
        Assert.Equal(0.15, LearningRateSchedule.At("cosine", 55, 100, 10, lr), 12);
        Assert.Equal(0.0, LearningRateSchedule.At("cosine", 100, 100, 10, lr), 12);
        Assert.Equal(0.03, LearningRateSchedule.At("cosine", 100, 100, 10, lr, minLrRatio: 0.1), 12);
        Assert.Equal(0.165, LearningRateSchedule.At("cosine", 55, 100, 10, lr, minLrRatio: 0.1), 12);
        Assert.Equal(lr, LearningRateSchedule.At("linear", 0, 100, 0, lr));
        Assert.Contains("cosine", Assert.Throws<SoftPromptException>(() => LearningRateSchedule.At("exp", 0, 1, 0, lr)).Message);
    }
}
