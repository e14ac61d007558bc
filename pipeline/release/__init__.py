"""The release gate and what a privacy reviewer audits: the gate's rounds and decision, image sizes that link, release/
built and swapped in whole, forget. Imports pipeline.outputs and below."""
