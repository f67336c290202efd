using System.Reflection;
using NetArchTest.Rules;

namespace SoftPrompt.Tests.Layering;

/// <summary>
/// The library's folders form layers (README, "Layout"): a folder may use the folders of lower layers, never one of
/// its own layer (siblings) or above. Checked over the compiled assembly's type references — signatures, fields and
/// method bodies — so fully or partly qualified names (<c>Opro.Judge</c>) count as much as <c>using</c> lines.
/// </summary>
public class LayeringTests
{
    /// <summary>Lowest first. Folders on one row are siblings: none of them may use another.</summary>
    public static readonly string[][] Layers =
    {
        new[] { "IO" },
        new[] { "Runtime" },
        new[] { "Distributed" },
        new[] { "Tokenization", "Data" },
        new[] { "Models" },
        new[] { "Tuning", "Optimization" },
        new[] { "Inference" },
        new[] { "Scoring" },
        new[] { "Llm" },
        new[] { "Runs" },
        new[] { "Training", "Search", "Evaluation", "Pretraining" },
        new[] { "Diagnostics" },
    };

    static readonly Assembly Library = typeof(SoftPromptException).Assembly;

    static string Ns(string folder) => "SoftPrompt." + folder;

    /// <summary>Folders (namespaces under SoftPrompt.) a layer's folder must not reference.</summary>
    static IEnumerable<string> Forbidden(int layer, string folder) =>
        Layers.Skip(layer).SelectMany(row => row).Where(f => f != folder);

    public static IEnumerable<object[]> Folders() =>
        Layers.SelectMany((row, i) => row.Select(f => new object[] { i, f }));

    [Theory]
    [MemberData(nameof(Folders))]
    public void Folder_uses_only_lower_layers(int layer, string folder)
    {
        var forbidden = Forbidden(layer, folder).Select(Ns).ToArray();
        var violations = new List<string>();
        foreach (var other in forbidden)
        {
            var r = Types.InAssembly(Library).That().ResideInNamespace(Ns(folder))
                .ShouldNot().HaveDependencyOnAny(other).GetResult();
            if (!r.IsSuccessful)
                violations.AddRange(r.FailingTypes.Select(t => $"{t.FullName} uses {other}"));
        }
        Assert.True(violations.Count == 0,
            $"{folder} (layer {layer}) may use only lower layers; it uses:\n  " + string.Join("\n  ", violations.Distinct()));
    }

    [Fact]
    public void Every_library_namespace_has_a_place_in_the_layers()
    {
        var placed = Layers.SelectMany(row => row).Select(Ns).ToHashSet();
        var unplaced = Library.GetTypes()
            .Select(t => t.Namespace ?? "")
            .Where(n => n != "SoftPrompt" && n.StartsWith("SoftPrompt", StringComparison.Ordinal))
            .Where(n => !placed.Any(p => n == p || n.StartsWith(p + ".", StringComparison.Ordinal)))
            .Distinct().ToList();
        Assert.True(unplaced.Count == 0, "namespaces with no layer (add them to Layers and to the README's Layout): " + string.Join(", ", unplaced));
    }

    [Fact]
    public void The_root_namespace_holds_only_the_shared_exception()
    {
        var root = Library.GetTypes().Where(t => t.Namespace == "SoftPrompt" && !t.Name.StartsWith('<')).Select(t => t.Name).ToList();
        Assert.Equal(new[] { nameof(SoftPromptException) }, root);
    }

    /// <summary>The check sees references made only inside method bodies and through qualified names: it reports
    /// dependencies that exist (so a passing layering test is not a check that sees nothing).</summary>
    [Theory]
    [InlineData("SoftPrompt.Evaluation", "SoftPrompt.Scoring")]   // Evaluator calls PromptLoss.ValidationLoss in a method body
    [InlineData("SoftPrompt.Search", "SoftPrompt.Llm")]           // the judge objective calls the judge
    [InlineData("SoftPrompt.Models", "SoftPrompt.Runtime")]       // the loader checks the memory budget
    public void The_check_sees_real_dependencies(string from, string to)
    {
        var r = Types.InAssembly(Library).That().ResideInNamespace(from).ShouldNot().HaveDependencyOnAny(to).GetResult();
        Assert.False(r.IsSuccessful, $"{from} is known to use {to}, but the check saw no reference");
    }

    /// <summary>Settings reach the library as arguments and options records, never as process-wide switches an
    /// application flips (the old ModelLoader.CheckFiniteByDefault, TorchRuntime.AllocatorMode).</summary>
    [Fact]
    public void The_library_has_no_public_static_mutable_state()
    {
        const BindingFlags Static = BindingFlags.Public | BindingFlags.Static | BindingFlags.DeclaredOnly;
        var found = new List<string>();
        foreach (var t in Library.GetExportedTypes())
        {
            found.AddRange(t.GetFields(Static).Where(f => !f.IsInitOnly && !f.IsLiteral).Select(f => $"field {t.FullName}.{f.Name}"));
            found.AddRange(t.GetProperties(Static).Where(p => p.SetMethod is { IsPublic: true }).Select(p => $"property {t.FullName}.{p.Name}"));
        }
        Assert.True(found.Count == 0, "public static state that callers can change: " + string.Join(", ", found));
    }

    [Fact]
    public void Library_knows_nothing_of_the_cli_or_the_server()
    {
        var refs = Library.GetReferencedAssemblies().Select(a => a.Name).ToList();
        Assert.DoesNotContain("softprompt", refs);
        Assert.DoesNotContain("SoftPrompt.Server", refs);
        Assert.DoesNotContain(refs, r => r!.StartsWith("Microsoft.AspNetCore", StringComparison.Ordinal));
    }
}
