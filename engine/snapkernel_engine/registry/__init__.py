"""Snapshots in OCI registries: one artifact per snapshot, found by its key and hardware, fetched untrusted until
every digest matches (oras-py speaks the distribution API)."""
