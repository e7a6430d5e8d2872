"""Shared fixtures for the model tests."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls are dominated by thread hand-offs on a shared 2-core machine: run them on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
