"""What starts kernels through jupyter_client, in a server or a CLI process: provisioner, spares, builds, runs."""
