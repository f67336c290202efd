using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace SoftPrompt.Server;

/// <summary>An error answered in OpenAI's shape: <c>{"error": {"message", "type", "param", "code"}}</c> with an HTTP status.</summary>
public sealed class ApiError : Exception
{
    public int Status { get; }
    public string Type { get; }
    public string? Param { get; }
    public string? Code { get; }
    public int? RetryAfterSeconds { get; init; }

    public ApiError(int status, string message, string? param = null, string? code = null, string? type = null) : base(message)
    {
        Status = status; Param = param; Code = code;
        Type = type ?? status switch
        {
            401 => "authentication_error",
            404 => "invalid_request_error",
            429 => "rate_limit_error",
            >= 500 => "server_error",
            _ => "invalid_request_error",
        };
    }

    public static ApiError BadField(string param, string message) => new(400, message, param);

    public object Body => new { error = new { message = Message, type = Type, param = Param, code = Code } };

    public Task WriteAsync(HttpContext ctx)
    {
        ctx.Response.StatusCode = Status;
        if (RetryAfterSeconds is int s) ctx.Response.Headers.RetryAfter = s.ToString(System.Globalization.CultureInfo.InvariantCulture);
        ctx.Response.ContentType = "application/json";
        return ctx.Response.WriteAsync(JsonSerializer.Serialize(Body, Json.Options));
    }
}

static class Json
{
    /// <summary>Response JSON. JSON has no NaN or infinity and System.Text.Json throws on them, which mid-stream would
    /// cut a response short: any non-finite float or double that reaches the writer is written as null.</summary>
    public static readonly JsonSerializerOptions Options = new()
    {
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        Converters = { new NonFiniteAsNull<float>(), new NonFiniteAsNull<double>() },
    };

    sealed class NonFiniteAsNull<T> : System.Text.Json.Serialization.JsonConverter<T> where T : struct, System.Numerics.IFloatingPointIeee754<T>
    {
        public override bool HandleNull => false;
        public override T Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) => T.CreateChecked(reader.GetDouble());
        public override void Write(Utf8JsonWriter writer, T value, JsonSerializerOptions options)
        {
            if (!T.IsFinite(value)) writer.WriteNullValue();
            else if (value is float f) writer.WriteNumberValue(f);
            else writer.WriteNumberValue(double.CreateChecked(value));
        }
    }
}
