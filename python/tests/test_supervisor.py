"""The supervisor's own bookkeeping, with real child processes."""

from __future__ import annotations

import logging
import sys
import time

import pytest

from thriftworker.supervisor import Supervisor


def test_the_exit_of_the_last_child_is_logged_even_after_the_last_turn(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The race a SIGTERM under load hit: every child exits after the last
    turn's reap, so the loop ends (nothing alive) without a turn that reaps
    them; their exits must still be logged."""
    sup = Supervisor([sys.executable, "-c", "pass"], workers=2)

    def turn_without_reaping() -> None:
        # A stop was asked; the children exit while this turn waits, after
        # the point where a real turn reaps.
        sup.exit_status = 0
        deadline = time.monotonic() + 10
        while any(c.proc.poll() is None for c in sup.children) and time.monotonic() < deadline:
            time.sleep(0.01)

    monkeypatch.setattr(sup, "_turn", turn_without_reaping)
    with caplog.at_level(logging.INFO, logger="thriftworker"):
        assert sup.run() == 0
    exits = [r.getMessage() for r in caplog.records if "exited with status 0" in r.getMessage()]
    assert len(exits) == 2, [r.getMessage() for r in caplog.records]
