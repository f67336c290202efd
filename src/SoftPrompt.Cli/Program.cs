using SoftPrompt.Cli;
using SoftPrompt.Runtime;

// Process-wide: keep freed memory in glibc's heap for reuse (Linux only; SOFTPROMPT_MALLOC=default turns it off).
var allocator = TorchRuntime.ConfigureAllocator();
return Cli.Invoke(Cli.BuildRoot(allocator), args);
