"""The run folder: where a run's files live (storage, layout), who may write them (lock, mounts), its secret and
run.json (provenance). Imports only pipeline.settings."""
