"""Fixtures shared by the detection tests."""
import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two OpenMP threads on a CPU shared with other processes can be many times slower than one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
