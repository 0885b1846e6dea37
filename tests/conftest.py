import os

import pytest
import torch

# Two xdist workers share two cores: one thread each keeps them from oversubscribing.
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
