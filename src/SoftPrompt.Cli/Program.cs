using System.CommandLine;
using SoftPrompt.Cli;
using SoftPrompt.Cli.Commands;

var root = new RootCommand("softprompt: tune soft prompts (prompt tuning, prefix tuning) for frozen Hugging Face causal LMs on TorchSharp.")
{
    InspectCommand.Create(),
    ScoreCommand.Create(),
    GenerateCommand.Create(),
    PretrainCommand.Create(),
};
return Cli.Invoke(root, args);
