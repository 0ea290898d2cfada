"""The process a snapkernel kernelspec's argv starts: it restores the kernel where nobody else does (VS Code and
other editors that run the argv themselves), and supervises it."""
