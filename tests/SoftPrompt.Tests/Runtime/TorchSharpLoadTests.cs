using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using TorchSharp;

namespace SoftPrompt.Tests.Runtime;

/// <summary>
/// TorchSharp loads from the build output's own natives. On Linux systems whose libstdc++ lacks GLIBCXX_3.4.32
/// (Debian 12), the build marks that version requirement weak (VER_FLG_WEAK) in the output copy of
/// libLibTorchSharp.so; this test parses the ELF .gnu.version_r section to check it, checks that the NuGet cache's
/// original was left alone, and that TorchSharp did not fall back to copying natives into a <c>cpu/</c> folder
/// (what it does when loading fails).
/// </summary>
public class TorchSharpLoadTests
{
    const string Needed = "GLIBCXX_3.4.32";
    const ushort VerFlgWeak = 2;
    static string NativeCopy => Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so");

    [Fact]
    public void TorchWorksAndNoFallbackCopyOfNativesExists()
    {
        using var t = torch.arange(1, 5, torch.ScalarType.Float32);
        Assert.Equal(10f, t.sum().item<float>());
        var cpuDirs = Directory.EnumerateDirectories(AppContext.BaseDirectory, "cpu", SearchOption.AllDirectories).ToList();
        Assert.True(cpuDirs.Count == 0, $"TorchSharp's fallback copy of natives exists: {string.Join(", ", cpuDirs)}");
    }

    [Fact]
    public void OutputCopyOfLibTorchSharpCanLoadOnThisSystem()
    {
        if (!RuntimeInformation.IsOSPlatform(OSPlatform.Linux) || RuntimeInformation.ProcessArchitecture != Architecture.X64) return; // Linux x64 only
        torch.ones(1).Dispose(); // make sure the natives (and libstdc++) are loaded
        Assert.True(File.Exists(NativeCopy), $"{NativeCopy} is missing");

        var flags = VernauxFlags(File.ReadAllBytes(NativeCopy));
        Assert.True(flags.ContainsKey(Needed), $"{NativeCopy} no longer requires {Needed}: update the build patch and this test");
        if (SystemLibStdCxxHas(Needed)) return; // nothing to patch on this system
        Assert.True((flags[Needed] & VerFlgWeak) != 0, $"{Needed} in {NativeCopy} is not marked weak (flags {flags[Needed]})");
        // Every other version requirement is untouched.
        Assert.All(flags.Where(kv => kv.Key != Needed), kv => Assert.Equal(0, kv.Value & VerFlgWeak));

        // The NuGet cache's original must not have been patched.
        var home = Environment.GetEnvironmentVariable("NUGET_PACKAGES") ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        var original = Path.Combine(home, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        if (File.Exists(original))
            Assert.Equal(0, VernauxFlags(File.ReadAllBytes(original))[Needed] & VerFlgWeak);
    }

    [Fact]
    public void ElfParserFindsGlibcRequirementsOfTheNativeCopy()
    {
        if (!RuntimeInformation.IsOSPlatform(OSPlatform.Linux) || !File.Exists(NativeCopy)) return;
        var flags = VernauxFlags(File.ReadAllBytes(NativeCopy));
        Assert.Contains(flags.Keys, k => k.StartsWith("GLIBC_2."));
        Assert.Contains(flags.Keys, k => k.StartsWith("GLIBCXX_3.4"));
    }

    /// <summary>The loaded libstdc++ (from /proc/self/maps) defines the version node <paramref name="version"/>.</summary>
    static bool SystemLibStdCxxHas(string version)
    {
        var lib = File.ReadLines("/proc/self/maps").Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Where(p => p.Length >= 6 && Path.GetFileName(p[5]).StartsWith("libstdc++.so")).Select(p => p[5]).FirstOrDefault();
        Assert.NotNull(lib);
        var bytes = File.ReadAllBytes(lib!);
        var needle = Encoding.ASCII.GetBytes(version + "\0");
        return bytes.AsSpan().IndexOf(needle) >= 0;
    }

    /// <summary>vna_flags of every Vernaux entry in the ELF64 little-endian file's SHT_GNU_verneed section, by version name.</summary>
    static Dictionary<string, ushort> VernauxFlags(byte[] elf)
    {
        var s = elf.AsSpan();
        Assert.True(s[..4].SequenceEqual(new byte[] { 0x7f, (byte)'E', (byte)'L', (byte)'F' }), "not an ELF file");
        Assert.Equal(2, s[4]); // ELFCLASS64
        Assert.Equal(1, s[5]); // little-endian
        ulong shoff = BinaryPrimitives.ReadUInt64LittleEndian(s[0x28..]);
        int shentsize = BinaryPrimitives.ReadUInt16LittleEndian(s[0x3A..]);
        int shnum = BinaryPrimitives.ReadUInt16LittleEndian(s[0x3C..]);
        (uint type, ulong off, ulong size, uint link, uint info) Sh(int i)
        {
            var h = elf.AsSpan(checked((int)shoff + i * shentsize), 64);
            return (BinaryPrimitives.ReadUInt32LittleEndian(h[4..]), BinaryPrimitives.ReadUInt64LittleEndian(h[24..]),
                BinaryPrimitives.ReadUInt64LittleEndian(h[32..]), BinaryPrimitives.ReadUInt32LittleEndian(h[40..]), BinaryPrimitives.ReadUInt32LittleEndian(h[44..]));
        }
        var result = new Dictionary<string, ushort>();
        for (int i = 0; i < shnum; i++)
        {
            var sec = Sh(i);
            if (sec.type != 0x6ffffffe) continue; // SHT_GNU_verneed
            var strtab = Sh((int)sec.link);
            string Str(uint o)
            {
                int start = checked((int)(strtab.off + o));
                int len = elf.AsSpan(start).IndexOf((byte)0);
                return Encoding.ASCII.GetString(elf, start, len);
            }
            int vn = (int)sec.off;
            for (uint n = 0; n < sec.info; n++)
            {
                ushort cnt = BinaryPrimitives.ReadUInt16LittleEndian(s[(vn + 2)..]);
                uint aux = BinaryPrimitives.ReadUInt32LittleEndian(s[(vn + 8)..]);
                uint next = BinaryPrimitives.ReadUInt32LittleEndian(s[(vn + 12)..]);
                int va = vn + (int)aux;
                for (int a = 0; a < cnt; a++)
                {
                    ushort flags = BinaryPrimitives.ReadUInt16LittleEndian(s[(va + 4)..]);
                    uint name = BinaryPrimitives.ReadUInt32LittleEndian(s[(va + 8)..]);
                    uint vnaNext = BinaryPrimitives.ReadUInt32LittleEndian(s[(va + 12)..]);
                    result[Str(name)] = flags;
                    va += (int)vnaNext;
                }
                if (next == 0) break;
                vn += (int)next;
            }
        }
        Assert.NotEmpty(result);
        return result;
    }
}
