// Linear probe: does a frozen model's representation hold a task's label at all? A prompt can only draw out what the
// model knows, so this is the ceiling check to run before blaming (or tuning) prompt or prefix training.
// Features per example: the hidden state at the last prompt token and the mean over the prompt's tokens, at the middle
// and at the final layer; a logistic regression (weight decay picked on a held-out fifth of the training rows) is fit
// on the training file and scored on the test file, next to the majority-class accuracy.
// Usage: dotnet run scripts/linear_probe.cs -- MODEL TRAIN.tsv TEST.tsv LABEL_COLUMN(0|1) TEMPLATE [MAX_TRAIN]
//   TSV files of two columns (label and input; LABEL_COLUMN says which is the label); TEMPLATE uses {input}.
#:project ../src/SoftPrompt/SoftPrompt.csproj
#:property UsesTorchNatives=true
using SoftPrompt.Models;
using TorchSharp;
using static TorchSharp.torch;

if (args.Length < 5) { Console.Error.WriteLine("usage: MODEL TRAIN.tsv TEST.tsv LABEL_COLUMN TEMPLATE [MAX_TRAIN]"); return 1; }
using var lm = LanguageModel.Load(args[0]);
int labelCol = int.Parse(args[3]);
string template = args[4].Replace("\\n", "\n");
int maxTrain = args.Length > 5 ? int.Parse(args[5]) : 2000;

(List<float[]> X, List<string> Y) Features(string path, int max)
{
    var rows = File.ReadAllLines(path).Select(l => l.Split('\t')).Where(c => c.Length == 2).ToList();
    var rng = new Random(1);
    rows = rows.OrderBy(_ => rng.Next()).Take(max).ToList();
    var X = new List<float[]>(); var Y = new List<string>();
    foreach (var c in rows)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var ids = lm.Encode(template.Replace("{input}", c[1 - labelCol]));
        if (ids.Length > 256) ids = ids[..256];
        var r = lm.Model.Forward(new ForwardArgs { InputIds = torch.tensor(ids.Select(i => (long)i).ToArray()).unsqueeze(0), OutputHiddenStates = true });
        var hs = r.HiddenStates!;
        var f = new List<Tensor>();
        foreach (var layer in new[] { hs.Count / 2, hs.Count - 1 }) { f.Add(hs[layer][0, -1]); f.Add(hs[layer][0].mean(new long[] { 0 })); }
        X.Add(torch.cat(f.ToArray(), 0).to(ScalarType.Float32).data<float>().ToArray());
        Y.Add(c[labelCol]);
    }
    return (X, Y);
}

var (xtrAll, ytrAll) = Features(args[1], maxTrain);
var (xteL, yte) = Features(args[2], 100_000);
var labels = ytrAll.Distinct().OrderBy(s => s, StringComparer.Ordinal).ToList();
Tensor M(IEnumerable<float[]> X) { var l = X.ToList(); return torch.tensor(l.SelectMany(r => r).ToArray()).view(l.Count, -1); }
Tensor Y(IEnumerable<string> y) => torch.tensor(y.Select(s => (long)labels.IndexOf(s)).ToArray());
int nFit = ytrAll.Count * 4 / 5;

double Accuracy(Tensor W, Tensor b, Tensor x, Tensor y) => (x.mm(W) + b).argmax(1).eq(y).to(ScalarType.Float32).mean().item<float>();
(Tensor W, Tensor b) Fit(Tensor x, Tensor y, double wd)
{
    var W = new TorchSharp.Modules.Parameter(torch.zeros(x.shape[1], labels.Count));
    var b = new TorchSharp.Modules.Parameter(torch.zeros(labels.Count));
    var opt = torch.optim.Adam(new[] { W, b }, 0.01);
    for (int i = 0; i < 500; i++)
    {
        using var scope = torch.NewDisposeScope();
        opt.zero_grad();
        (nn.functional.cross_entropy(x.mm(W) + b, y) + wd * W.pow(2).sum()).backward();
        opt.step();
    }
    return (W, b);
}
Tensor Standardize(Tensor x, Tensor mu, Tensor sd) => (x - mu) / sd;

var xfit = M(xtrAll.Take(nFit)); var mu = xfit.mean(new long[] { 0 }); var sd = xfit.std(0) + 1e-5;
xfit = Standardize(xfit, mu, sd);
var xhold = Standardize(M(xtrAll.Skip(nFit)), mu, sd);
var (yfit, yhold) = (Y(ytrAll.Take(nFit)), Y(ytrAll.Skip(nFit)));
double bestWd = 0, bestHold = -1;
foreach (var wd in new[] { 1e-3, 1e-2, 1e-1 })
{
    var (W, b) = Fit(xfit, yfit, wd);
    double a = Accuracy(W, b, xhold, yhold);
    Console.WriteLine($"weight decay {wd}: held-out-train accuracy {a:F3}");
    if (a > bestHold) (bestHold, bestWd) = (a, wd);
}
var xall = M(xtrAll); var mu2 = xall.mean(new long[] { 0 }); var sd2 = xall.std(0) + 1e-5;
var (Wf, bf) = Fit(Standardize(xall, mu2, sd2), Y(ytrAll), bestWd);
double test = Accuracy(Wf, bf, Standardize(M(xteL), mu2, sd2), Y(yte));
double majority = yte.GroupBy(v => v).Max(g => g.Count()) / (double)yte.Count;
Console.WriteLine($"linear probe accuracy {test:F3} vs majority {majority:F3} (train {ytrAll.Count}, test {yte.Count}, weight decay {bestWd}, {xall.shape[1]} features)");
return 0;
