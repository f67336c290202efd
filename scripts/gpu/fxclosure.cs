// Prints the framework assemblies an app can bind: the transitive closure of the assembly references of the app's
// managed files over the shared-framework folders given (Microsoft.NETCore.App first, then e.g. Microsoft.AspNetCore.App;
// facades included, as they forward to what they name), one full path a line.
// Used by scripts/gpu/pack.sh to ship only those with the kit's runtime. Usage: dotnet run fxclosure.cs -- APP_DIR FX_DIR...
using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;

var appDir = args[0];
var fx = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
foreach (var dir in args.Skip(1))
    foreach (var f in Directory.GetFiles(dir, "*.dll")) fx.TryAdd(Path.GetFileNameWithoutExtension(f), f);
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
foreach (var n in keep.OrderBy(n => n, StringComparer.Ordinal)) Console.WriteLine(fx[n]);
