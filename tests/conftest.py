import os

import pytest

os.environ.setdefault("MNCLI_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
