using Microsoft.Extensions.AI;
using SoftPrompt.Distributed;
using SoftPrompt.Llm;

namespace SoftPrompt.Search;

/// <summary>
/// The calls an OPRO run makes to language-model services (the optimizer, the judge) when the run spans MPI ranks:
/// rank 0 alone makes them (once per job, as one process would: the same requests, seeds and bill), and every rank
/// gets the replies together with the call / token meter's counts, so that every rank runs the same search on them
/// and stops at the same step when the budget runs out. The frozen model's scoring, the costly part, is what the
/// ranks share (<see cref="TargetLossObjective.Communicator"/>). In one process a call is made as it is.
/// </summary>
public sealed class RootCalls(ICommunicator comm, CallMeter meter)
{
    public ICommunicator Comm => comm;

    /// <summary>True on the rank that calls the services (rank 0; every process outside MPI).</summary>
    public bool Calls => comm.IsWriter;

    /// <summary>Runs <paramref name="call"/> on rank 0; its result (JSON-serialisable) and the meter's counts on every
    /// rank. A failure there ends every rank at this point (<see cref="Collectives.OnRoot{T}"/>).</summary>
    public T Run<T>(Func<T> call)
    {
        if (comm.Size == 1) return call();
        var reply = comm.OnRoot(() => new Reply<T>(call(), meter.OptimizerCalls, meter.JudgeCalls, meter.InputTokens, meter.OutputTokens));
        if (!comm.IsWriter) meter.Restore(reply.OptimizerCalls, reply.JudgeCalls, reply.InputTokens, reply.OutputTokens);
        return reply.Value;
    }

    /// <summary>True on every rank when a stop was asked for on any (checked between steps, where every rank is).</summary>
    public bool StopRequested(CancellationToken cancel) => comm.Any(cancel.IsCancellationRequested);

    /// <summary>The token work inside a step may look at: none under MPI, where ranks must stop at the same point
    /// (between steps, <see cref="StopRequested"/>).</summary>
    public CancellationToken InStep(CancellationToken cancel) => comm.InCollective(cancel);

    sealed record Reply<T>(T Value, int OptimizerCalls, int JudgeCalls, long InputTokens, long OutputTokens);
}

/// <summary>What stands for the optimizer or the judge on the ranks that do not call it (every rank but 0 of an MPI
/// job, see <see cref="RootCalls"/>): being called is a bug, said as such.</summary>
public sealed class RootOnlyChatClient(string role, int rank) : IChatClient
{
    public Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default) =>
        throw new InvalidOperationException($"rank {rank} called the {role}; only rank 0 calls it (RootCalls)");

    public IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default) =>
        throw new InvalidOperationException($"rank {rank} called the {role}; only rank 0 calls it (RootCalls)");

    public object? GetService(Type serviceType, object? serviceKey = null) => serviceType.IsInstanceOfType(this) ? this : null;

    public void Dispose() { }
}
