"""The `jupyter snapkernel` command line."""
