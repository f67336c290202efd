using SoftPrompt.Data;
using SoftPrompt.Inference;
using SoftPrompt.IO;
using SoftPrompt.Distributed;
using SoftPrompt.Runtime;
using SoftPrompt.Scoring;
using TorchSharp;

namespace SoftPrompt.Runs;

/// <summary>The examples a job reads: the training (or search, or test) set and its validation / held-out part.</summary>
public sealed record RunData(IReadOnlyList<Example> Train, IReadOnlyList<Example> Validation);

/// <summary>
/// What train, search and eval each do around their own work, written once: lock the run folder and clean up what a
/// failed run added, seed, read the data and split off validation, check --labels, set threads, load the model and
/// tokenizer; and, when launched as several ranks, the distributed part: the rank's device and threads, the start-up
/// check that every rank was given the same config, data and model, the banner, and the rule that rank 0 alone
/// writes (only it takes the lock and removes files).
/// </summary>
public sealed class RunScaffold
{
    public ICommunicator Comm { get; }
    /// <summary>Messages for the user: only rank 0 says anything.</summary>
    public Action<string>? Message { get; }
    public bool IsWriter => Comm.IsWriter;

    public RunScaffold(ICommunicator? comm, Action<string>? message)
    {
        Comm = comm ?? SingleProcess.Instance;
        Message = Comm.IsWriter ? message : null;
    }

    /// <summary>
    /// Runs <paramref name="body"/> with <paramref name="runDir"/> locked by rank 0 (created and proven writable before
    /// anything is read, held to the end: a second writer fails at once, naming this one). When the body fails and
    /// <paramref name="keepOnFailure"/> says there is nothing to resume from, the files and folders this run added are
    /// removed.
    /// </summary>
    public T InRunFolder<T>(string runDir, Func<T> body, Func<bool> keepOnFailure)
    {
        var runLock = Comm.Agree(() =>
        {
            if (File.Exists(runDir)) throw new SoftPromptException($"--output {runDir}: is a file, expected a run folder.");
            return IsWriter ? RunLock.Acquire(runDir) : null;
        });
        bool ok = false;
        try
        {
            var r = body();
            ok = true;
            return r;
        }
        finally
        {
            runLock?.Dispose();
            if (!ok && runLock is not null && !keepOnFailure()) runLock.RemoveWhatThisRunAdded();
        }
    }

    /// <summary>A step of the job's set-up that every rank takes and that makes no collective call (validation, reading
    /// and checking the data): under MPI a failure ends every rank here, said once (<see cref="Collectives.Agree{T}"/>).</summary>
    public T Agree<T>(Func<T> step) => Comm.Agree(step);

    public void Agree(Action step) => Comm.Agree(step);

    /// <summary>The same seed on every rank: initial prompts and sampling are identical everywhere.</summary>
    public static void Seed(int seed) => torch.manual_seed(seed);

    /// <summary>Reads <paramref name="train"/> and the validation data: a file, or a seeded split of
    /// <paramref name="validationSplit"/> of the training examples; skipped bad lines are reported.</summary>
    public RunData ReadData(DataOptions d, string train, string? validation, double validationSplit, int seed)
    {
        var read = DatasetReader.Read(train, d);
        ReportSkipped(train, read);
        IReadOnlyList<Example> trainEx = read.Examples, valEx = Array.Empty<Example>();
        if (validation is not null)
        {
            var valRead = DatasetReader.Read(validation, d);
            ReportSkipped(validation, valRead);
            valEx = valRead.Examples;
        }
        else if (validationSplit > 0 && trainEx.Count >= 2) (trainEx, valEx) = DatasetSplit.Split(trainEx, validationSplit, seed);
        return new RunData(trainEx, valEx);
    }

    void ReportSkipped(string path, DatasetReadResult read)
    {
        if (read.Skipped > 0) Message?.Invoke($"{path}: skipped {read.Skipped} bad line{(read.Skipped == 1 ? "" : "s")} (--skip-bad-lines); first: {read.Problems.FirstOrDefault()}");
    }

    /// <summary>--labels: every label must occur in the data (the label field's values).</summary>
    public static void CheckLabels(RunData data, DataOptions d, string? labels, string dataName)
    {
        if (labels is not null) ClassificationTask.CheckLabels(data.Train.Concat(data.Validation).ToList(), d, labels, dataName);
    }

    /// <summary>
    /// Threads, the distributed start-up check and the model: every rank must have been given the same options
    /// (<paramref name="configJson"/>), data files and model, or all stop with one error naming the ranks that differ;
    /// then threads (a rank's default is its share of the host's cores), the model on the rank's device, and the
    /// banner on rank 0. <paramref name="threadLog"/> receives the thread-count notes (null: warnings only).
    /// </summary>
    public LanguageModel LoadModel(string model, string device, string dtype, bool checkFinite, int threads, string configJson, IEnumerable<string> dataFiles,
        Action<string>? threadLog = null)
    {
        if (Comm.Size > 1)
        {
            Comm.CheckSame("config (options)", Collectives.Fingerprint(configJson, Array.Empty<string>()));
            Comm.CheckSame("data file (contents)", Collectives.Fingerprint("", dataFiles));
            Comm.CheckSame("model (config, tokenizer or weights)", Collectives.Fingerprint("", ModelFingerprintFiles(model), headBytes: 1 << 20));
            if (threads == 0) threads = Launch.DefaultThreads(Comm);
        }
        int n = TorchRuntime.SetThreads(threads, IsWriter ? threadLog : _ => { }); // only rank 0 says anything (warnings too)
        bool perRank = false; // each rank on its own GPU, cuda:<local rank>
        var lm = Comm.Agree(() =>
        {
            var mine = Comm.Size > 1 ? DeviceFor(device) : device;
            perRank = mine != device && mine.StartsWith("cuda:", StringComparison.Ordinal);
            return LanguageModel.Load(model, mine, dtype, checkFinite);
        });
        if (Comm.Size > 1) Message?.Invoke(Launch.Banner(Comm, lm.Base.Device.ToString(), n, perRank));
        return lm;
    }

    /// <summary>This rank's device: cuda becomes cuda:&lt;local rank&gt;; a host with fewer GPUs than ranks is said so.</summary>
    string DeviceFor(string device)
    {
        if (device.Equals("auto", StringComparison.OrdinalIgnoreCase)) device = torch.cuda.is_available() ? "cuda" : "cpu";
        var mine = Launch.DeviceFor(device, Comm);
        if (mine != device && torch.cuda.is_available() && torch.cuda.device_count() is int gpus && Comm.LocalRank >= gpus)
            throw new SoftPromptException($"--device {device}: this host runs {Comm.LocalSize} ranks but has {gpus} GPU{(gpus == 1 ? "" : "s")}; each rank takes cuda:<local rank>, " +
                                          $"so start at most {gpus} rank{(gpus == 1 ? "" : "s")} per host (mpirun --map-by ppr:{gpus}:node), or give --device cpu.");
        return mine;
    }

    /// <summary>The model folder's files, each by its length and first megabyte: config and tokenizer files in full
    /// (or nearly), weights by their safetensors header (reading gigabytes on every rank at start-up would cost more
    /// than it checks).</summary>
    static IEnumerable<string> ModelFingerprintFiles(string model) =>
        Directory.Exists(model) ? Directory.GetFiles(model).OrderBy(f => f, StringComparer.Ordinal).ToArray()
        : File.Exists(model) ? new[] { model } : Array.Empty<string>();
}
