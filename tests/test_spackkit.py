"""The real-Spack test kit itself: both versions set up and answer."""

from __future__ import annotations

import pytest
from spackkit import SpackKit

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_spack_12_answers(spack12: SpackKit) -> None:
    assert spack12.run("--version").stdout.strip().startswith("1.2")


def test_spack_023_answers(spack023: SpackKit) -> None:
    assert spack023.run("--version").stdout.strip().startswith("0.23")
