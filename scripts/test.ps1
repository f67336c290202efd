# PowerShell equivalent of scripts/test.sh: runs the test suite and prints a final "N passed, N failed" line; exits
# with dotnet test's status. Extra arguments go to dotnet test (e.g. --filter "Category!=Slow").
Set-Location (Join-Path $PSScriptRoot "..")
$log = New-TemporaryFile
& dotnet test SoftPrompt.sln -c Release --nologo @args 2>&1 | Tee-Object -FilePath $log
$rc = $LASTEXITCODE
$text = Get-Content $log -Raw
Remove-Item $log
$passed = ([regex]::Matches($text, 'Passed: +(\d+)') | ForEach-Object { [int]$_.Groups[1].Value } | Measure-Object -Sum).Sum
$failed = ([regex]::Matches($text, 'Failed: +(\d+)') | ForEach-Object { [int]$_.Groups[1].Value } | Measure-Object -Sum).Sum
if (-not $passed) { $passed = 0 }
if (-not $failed) { $failed = 0 }
if ($rc -ne 0 -and $failed -eq 0) { $failed = 1 }  # build error: count it as a failure
Write-Output "$passed passed, $failed failed"
exit $rc
