"""Job settings: what a job is asked to do (settings/config), what determines its outputs (fingerprint), the gate's
thresholds. Imports nothing else of pipeline."""
