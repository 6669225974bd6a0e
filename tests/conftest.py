"""Shared pytest hooks: tests marked ``slow`` run only with ``--run-slow`` (``make test-slow``)."""

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow test: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def one_thread_per_worker():
    # The suite runs as 2 xdist workers on 2 cores; a second intra-op thread per worker only spins
    # against the other worker (tiny matmuls measured 7x slower with 2 threads on this machine).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
