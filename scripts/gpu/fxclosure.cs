// Prints the framework assemblies an app can bind: the transitive closure of the assembly references of the app's
// managed files over a Microsoft.NETCore.App folder (facades included, as they forward to what they name).
// Used by scripts/gpu/pack.sh to ship only those with the kit's runtime. Usage: dotnet run fxclosure.cs -- APP_DIR FX_DIR
using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;

var (appDir, fxDir) = (args[0], args[1]);
var fx = Directory.GetFiles(fxDir, "*.dll").ToDictionary(f => Path.GetFileNameWithoutExtension(f), StringComparer.OrdinalIgnoreCase);
var keep = new HashSet<string>(StringComparer.OrdinalIgnoreCase) { "System.Private.CoreLib" };
var queue = new Queue<string>(Directory.GetFiles(appDir, "*.dll"));
queue.Enqueue(fx["System.Private.CoreLib"]);
while (queue.Count > 0)
{
    var file = queue.Dequeue();
    using var pe = new PEReader(File.OpenRead(file));
    if (!pe.HasMetadata) continue;
    var md = pe.GetMetadataReader();
    foreach (var h in md.AssemblyReferences)
    {
        var name = md.GetString(md.GetAssemblyReference(h).Name);
        if (fx.TryGetValue(name, out var path) && keep.Add(name)) queue.Enqueue(path);
    }
}
foreach (var n in keep.OrderBy(n => n, StringComparer.Ordinal)) Console.WriteLine(n + ".dll");
