"""Model weights onto a node: what a job needs (needs), the files and their recorded sha256 (files), a store they are
fetched from or pushed to, and `--weights-from` for the driver and each actor (store). Imports only the libraries."""
