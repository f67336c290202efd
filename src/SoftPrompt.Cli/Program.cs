using SoftPrompt.Cli;

return Cli.Invoke(Cli.BuildRoot(), args);
