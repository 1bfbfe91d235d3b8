"""Queue names: one per model, never shared by two models, readable by an operator."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from taskqueue.app import QUEUE_PREFIX, queue_name


def test_a_hub_id_and_a_folder_that_read_alike_get_different_queues():
    names = {queue_name(model) for model in ("models/x-tiny", "models/x/tiny", "models-x/tiny")}
    assert len(names) == 3


def test_a_queue_name_shows_which_model_it_serves():
    name = queue_name("senmaonk/loopfree-sd1.5")
    assert name.startswith(QUEUE_PREFIX + "senmaonk-loopfree-sd1.5.")
    assert queue_name("senmaonk/loopfree-sd1.5") == name  # stable across processes and calls


def test_a_very_long_model_path_still_gives_a_short_queue_name():
    assert len(queue_name("/srv/models/" + "deep/" * 50 + "tiny")) < 120


@given(st.text(min_size=1, max_size=60), st.text(min_size=1, max_size=60))
def test_different_models_never_share_a_queue(first, second):
    if first != second:
        assert queue_name(first) != queue_name(second)
