"""The run's tables: every schema once (schemas), the one table writer, batch parts and shards (records, shards),
resume planning, failed rows. Imports pipeline.folder and pipeline.settings."""
