import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is faster than several (and far faster on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
