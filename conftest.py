"""Root pytest settings, shared by the unit tests and `pytest --nbval notebooks/`."""

import os

# Tests and CI run on the smallest run budget; notebook kernels inherit the variable.
os.environ.setdefault("DDPM_TEACH_BUDGET", "smoke")
