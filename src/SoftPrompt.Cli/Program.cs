using SoftPrompt.Cli;
using SoftPrompt.Runtime;

// Process-wide: keep freed memory in glibc's heap for reuse (Linux only; SOFTPROMPT_MALLOC=default turns it off).
var allocator = TorchRuntime.ConfigureAllocator();
// Process-wide, before libtorch loads: libtorch's OpenMP threads sleep when idle instead of spinning (OMP_WAIT_POLICY=PASSIVE
// unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set; SOFTPROMPT_OMP=default leaves libgomp's own), so sharing the cores
// with other jobs degrades gently.
TorchRuntime.ConfigureOpenMp();
return Cli.Invoke(Cli.BuildRoot(allocator), args);
