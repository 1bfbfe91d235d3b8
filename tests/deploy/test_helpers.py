"""The helpers the deployment checks rely on: if these were wrong, the checks would be too."""

from __future__ import annotations

import pytest

from .helpers import interpolate, require


def test_a_missing_tool_fails_in_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        require(False, "no such tool")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        require(False, "no such tool")
    require(True, "present")


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A:-x}", {}, "x"),
        ("${A:-x}", {"A": ""}, "x"),
        ("${A-x}", {"A": ""}, ""),
        ("${A:-x}", {"A": "y"}, "y"),
        ("${A}", {}, ""),
        ("pre-${A:-x}-${B:-}-post", {}, "pre-x--post"),
        ("$$HOME", {}, "$HOME"),
        ("http://${U:-u}:${P:-p}@h:1", {"P": "s3cret"}, "http://u:s3cret@h:1"),
    ],
)
def test_interpolation_follows_compose(text, env, expected):
    assert interpolate(text, env) == expected


def test_interpolation_raises_on_a_required_variable():
    with pytest.raises(KeyError, match="set it"):
        interpolate("${A:?set it}", {})
