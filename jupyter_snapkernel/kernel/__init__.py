"""What runs in the kernel process: the kernel application, its build and resume, recording and magics."""
