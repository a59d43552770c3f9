"""Imported at start-up by every Python process the test suite launches (conftest puts tests/ on
PYTHONPATH): a torchrun worker (WORLD_SIZE > 1) with MNCLI_COLLECTIVE_CHECK=1 gets the collective
checker of distributed_checker.py. Any other process only reads two environment variables."""

import os

if os.environ.get("MNCLI_COLLECTIVE_CHECK") == "1" and int(os.environ.get("WORLD_SIZE") or 1) > 1:
    import distributed_checker

    distributed_checker.install()
