using Anthropic;
using Anthropic.Bedrock;
using Microsoft.Extensions.AI;

namespace SoftPrompt.Llm;

/// <summary>Where a remote optimizer or judge lives: the provider (openai: any OpenAI-compatible endpoint; anthropic:
/// the Anthropic API; bedrock: Claude on Amazon Bedrock), the base URL (required for openai; an override for the others,
/// e.g. a VPC endpoint or a test server), the model, the environment variable holding the key (openai, anthropic), the
/// retries and the per-call timeout. <paramref name="Role"/> (optimizer, judge) names the options in messages.</summary>
public sealed record ChatEndpoint(string Provider, string? Endpoint, string Model, string? KeyEnv, int MaxRetries, TimeSpan Timeout, string Role);

/// <summary>
/// Builds the chat client of a provider behind the one <see cref="IChatClient"/> seam: OpenAI-compatible endpoints
/// through the official OpenAI SDK (<see cref="ChatErrors.OpenAiCompatible"/>), the Anthropic API through the official
/// <c>Anthropic</c> SDK, and Claude on Amazon Bedrock through <c>Anthropic.Bedrock</c> (SigV4-signed requests, the
/// standard AWS credential chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE and the
/// shared credentials file, AWS_BEARER_TOKEN_BEDROCK; region from AWS_REGION or the profile). Both SDKs give their own
/// IChatClient (Microsoft.Extensions.AI) and their own retry policy (408/409/429/5xx and connection errors, bounded by
/// --max-retries). Keys and AWS secrets are read from the environment only, are never logged or written, and are
/// masked in any server text quoted in an error.
/// </summary>
public static class ChatProviders
{
    public static readonly string[] Names = { "openai", "anthropic", "bedrock" };
    public const string AnthropicKeyEnv = "ANTHROPIC_API_KEY";

    public static (IChatClient Client, EndpointInfo Info) Create(ChatEndpoint e)
    {
        switch (e.Provider)
        {
            case "openai":
                if (e.Endpoint is null) throw new SoftPromptException($"--{e.Role}-provider openai needs --{e.Role}-endpoint (an OpenAI-compatible base URL).");
                return ChatErrors.OpenAiCompatible(e.Endpoint, e.Model, e.KeyEnv, e.MaxRetries, e.Timeout, e.Role);
            case "anthropic":
            {
                var env = e.KeyEnv ?? AnthropicKeyEnv;
                var key = Environment.GetEnvironmentVariable(env);
                if (string.IsNullOrEmpty(key)) throw new SoftPromptException($"--{e.Role}-provider anthropic: the environment variable {env} (the API key) is not set or empty{(e.KeyEnv is null ? "; name another with --api-key-env" : "")}.");
                var url = CheckUrl(e.Endpoint, e.Role);
                var client = new AnthropicClient(new Anthropic.Core.ClientOptions { ApiKey = key, BaseUrl = url ?? "https://api.anthropic.com", MaxRetries = e.MaxRetries, Timeout = e.Timeout });
                return (client.AsIChatClient(e.Model, Judge.MaxReplyTokens), new EndpointInfo(url ?? "https://api.anthropic.com", e.Model, env, e.Role, e.MaxRetries, new[] { key }, "anthropic"));
            }
            case "bedrock":
            {
                var url = CheckUrl(e.Endpoint, e.Role);
                IAnthropicBedrockCredentials creds;
                try { creds = AnthropicBedrockCredentialsHelper.FromEnv().AsTask().GetAwaiter().GetResult()!; }
                catch (Exception x) when (x is not OperationCanceledException) { throw new SoftPromptException($"--{e.Role}-provider bedrock: the AWS credentials could not be read ({x.GetType().Name}: {OneLine(x.Message)})."); }
                if (creds is null)
                    throw new SoftPromptException($"--{e.Role}-provider bedrock: no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a shared credentials file, or AWS_BEARER_TOKEN_BEDROCK).");
                if (string.IsNullOrEmpty(creds.Region))
                    throw new SoftPromptException($"--{e.Role}-provider bedrock: no AWS region (set AWS_REGION, or a region in the AWS profile).");
                var secrets = new List<string>();
                switch (creds)
                {
                    case AnthropicBedrockPrivateKeyCredentials pk: secrets.Add(pk.ApiSecret); break;
                    case AnthropicBedrockApiTokenCredentials tk: secrets.Add(tk.BearerToken); break;
                }
                if (Environment.GetEnvironmentVariable("AWS_SESSION_TOKEN") is { Length: > 0 } st) secrets.Add(st);
                var client = new AnthropicBedrockClient(creds).WithOptions(o => o with
                {
                    BaseUrl = url ?? $"https://bedrock-runtime.{creds.Region}.amazonaws.com", MaxRetries = e.MaxRetries, Timeout = e.Timeout,
                });
                return (client.AsIChatClient(e.Model, Judge.MaxReplyTokens),
                    new EndpointInfo(url ?? $"bedrock-runtime.{creds.Region}", e.Model, null, e.Role, e.MaxRetries, secrets, "bedrock"));
            }
            default:
                throw new SoftPromptException($"--{e.Role}-provider '{e.Provider}': expected {string.Join(", ", Names)}.");
        }
    }

    static string? CheckUrl(string? url, string role)
    {
        if (url is null) return null;
        if (!Uri.TryCreate(url, UriKind.Absolute, out var u) || u.Scheme is not ("http" or "https"))
            throw new SoftPromptException($"--{role}-endpoint '{url}': expected an http:// or https:// URL.");
        return url.TrimEnd('/');
    }

    static string OneLine(string s) => string.Join(" ", s.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries));
}
