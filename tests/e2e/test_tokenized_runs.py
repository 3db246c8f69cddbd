"""End-to-end runs for tokenized: the unit tests are in tests/unit/test_tokenized.py."""

from __future__ import annotations

import pytest

from conftest import FAST, run_in_process

pytest.importorskip("datasets")


def test_the_token_cache_leaves_results_unchanged(tmp_path):
    """Runs with and without the token cache give the same results."""
    on = run_in_process([*FAST, "token_cache=true"], tmp_path / "on")
    off = run_in_process([*FAST, "token_cache=false"], tmp_path / "off")
    assert on["results"] == off["results"]
