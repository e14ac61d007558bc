"""One pass of a job on Ray: the driver, its stages and actors, inputs, cluster, progress and timings. Imports
pipeline.tables and below."""
