"""What runs in the Jupyter server only: the server extension and its REST handlers."""
