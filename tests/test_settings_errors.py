"""A LOOPFREE_* variable with a value the settings refuse is one line naming it, not a traceback."""

from __future__ import annotations

import pytest

from tests.harness import run_cli


@pytest.mark.parametrize(
    ("variable", "value", "told"),
    [
        ("LOOPFREE_MAX_BATCH", "abc", "LOOPFREE_MAX_BATCH: Input should be a valid integer"),
        ("LOOPFREE_HEARTBEAT_S", "-1", "LOOPFREE_HEARTBEAT_S: Input should be greater than 0"),
        ("LOOPFREE_UI_TOKEN", "", None),  # empty means unset: accepted
    ],
)
def test_a_refused_setting_is_one_line_naming_the_variable(tmp_path, variable, value, told):
    result = run_cli(["submissions"], {"LOOPFREE_HOME": str(tmp_path), variable: value})
    assert "Traceback" not in result.stderr
    if told is None:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {told}"), result.stderr
    assert f"'{value}'" in result.stderr and len(result.stderr.strip().splitlines()) == 1

