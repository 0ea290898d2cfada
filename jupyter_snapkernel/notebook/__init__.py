"""What every process shares about a notebook: its setup section, its snapshot state, and its build."""
