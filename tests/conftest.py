"""Shared test settings."""

import torch

# The tests use small tensors, where extra threads cost more than they give (and CI has 2 cores).
torch.set_num_threads(1)
