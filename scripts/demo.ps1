# PowerShell equivalent of scripts/demo.sh (Windows, or pwsh anywhere): the offline demo end to end on the shipped
# small model. Settings live in configs/demo-*.json; extra arguments go to every softprompt command
# (e.g. scripts/demo.ps1 --threads 1). $env:DEMO_QUICK = "1" runs a few steps only. The last line printed is the
# report folder.
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..")
$runs = if ($env:DEMO_RUNS) { $env:DEMO_RUNS } else { "runs/demo" }
$quick = $env:DEMO_QUICK -eq "1"

function Invoke-Softprompt([string[]] $argv) {
    & dotnet src/SoftPrompt.Cli/bin/Release/net10.0/softprompt.dll @argv
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
}

Write-Host "== building (Release)"
& dotnet build src/SoftPrompt.Cli -c Release -nologo -v q
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }

foreach ($d in "prompt", "prefix", "search") { Remove-Item -Recurse -Force -ErrorAction SilentlyContinue (Join-Path $runs $d) }
$trainQuick = if ($quick) { @("--steps", "4", "--eval-every", "2") } else { @() }
Write-Host "== 1/4 prompt tuning"
Invoke-Softprompt (@("train", "--config", "configs/demo-prompt.json", "--output", "$runs/prompt") + $trainQuick + $args)
Write-Host "== 2/4 prefix tuning"
Invoke-Softprompt (@("train", "--config", "configs/demo-prefix.json", "--output", "$runs/prefix") + $trainQuick + $args)
Write-Host "== 3/4 hard-prompt search"
$searchQuick = if ($quick) { @("--steps", "2", "--eval-every", "1", "--score-examples", "16") } else { @() }
Invoke-Softprompt (@("search-hard-prompt", "--config", "configs/demo-search.json", "--output", "$runs/search") + $searchQuick + $args)
Write-Host "== 4/4 evaluation"
$evalQuick = if ($quick) { @("--max-examples", "40") } else { @() }
Invoke-Softprompt (@("eval", "--config", "configs/demo-eval.json", "--output", "$runs/report",
    "--prompt", "$runs/prompt/adapter", "--prompt", "$runs/prefix/adapter", "--searched", "$runs/search",
    "--run", "$runs/prompt", "--run", "$runs/prefix") + $evalQuick + $args)
