"""Name rules are whole-string matches: a trailing newline is not a valid name (R-CLI-2)."""

from __future__ import annotations

import pytest

from console import values

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["web\n", "web\r\n", "we b", "", "x" * 64, "wéb"])
def test_bad_app_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="app names"):
        values.app_name(name)


@pytest.mark.parametrize("name", ["web", "Web-2", "a" * 63])
def test_good_app_names_pass(name: str) -> None:
    assert values.app_name(name) == name


def test_scope_names_are_whole_string_matches() -> None:
    with pytest.raises(ValueError):
        values.scope_name("acme\n")
    assert values.scope_name("acme.prod_1") == "acme.prod_1"
