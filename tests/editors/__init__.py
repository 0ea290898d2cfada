"""Kernels started by frontends and runners other than jupyter_server: VS Code, papermill, nbclient."""
