"""Shared fixtures: the real test models from the catalog (fetched by .ci/run, cached after).

Helpers (options, generate_ids, the tie proof) live in support.py."""

from __future__ import annotations

import pytest

from ouroboros_lite.catalog import pull
from ouroboros_lite.runtime import Runtime
from support import DRAFT, GEMMA, TARGET, options


@pytest.fixture(scope="session")
def target_path():
    return pull(TARGET)


@pytest.fixture(scope="session")
def draft_path():
    return pull(DRAFT)


@pytest.fixture(scope="session")
def gemma_path():
    return pull(GEMMA)


@pytest.fixture(scope="session")
def pair(target_path, draft_path):
    """The test pair: F32 target, Q4_1 draft, both methods available."""
    with Runtime(target_path, draft_path, method="ar", options=options()) as runtime:
        yield runtime


@pytest.fixture(scope="session")
def q4(draft_path):
    with Runtime(draft_path, options=options()) as runtime:
        yield runtime


@pytest.fixture(scope="session")
def gemma(gemma_path):
    with Runtime(gemma_path, options=options()) as runtime:
        yield runtime
