"""What a finished pass leaves: finalize (summary, report, run.json), the linkage attack, diversity, augment's train/
and enhance's benchmark. Imports pipeline.execution and below."""
