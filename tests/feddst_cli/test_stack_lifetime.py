"""`stack_lifetime`: SIGTERM and Ctrl-C exit 130, the listed errors exit 1, the stack is always shut down."""

from __future__ import annotations

import os
import signal

import pytest
import typer

from feddst_cli.stack_lifetime import stack_lifetime


class RecordingStack:
    def __init__(self) -> None:
        self.shutdowns = 0

    def shutdown(self) -> None:
        self.shutdowns += 1


class TrialFailed(RuntimeError):
    pass


def test_sigterm_exits_130_after_shutting_down_and_restores_the_handler(capsys: pytest.CaptureFixture[str]) -> None:
    stack = RecordingStack()
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(typer.Exit) as exit_info, stack_lifetime(stack, (TrialFailed,)):
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal, delivered to this (the main) thread
        pytest.fail("SIGTERM did not interrupt the body")
    assert exit_info.value.exit_code == 130
    assert stack.shutdowns >= 1
    assert signal.getsignal(signal.SIGTERM) is before
    assert "interrupted: shutting everything down" in capsys.readouterr().err


def test_a_listed_error_exits_1_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    stack = RecordingStack()
    with pytest.raises(typer.Exit) as exit_info, stack_lifetime(stack, (TrialFailed,)):
        raise TrialFailed("every agent exited; see runs/x/logs")
    assert exit_info.value.exit_code == 1
    assert stack.shutdowns >= 1
    assert "error: every agent exited; see runs/x/logs" in capsys.readouterr().err


def test_other_errors_pass_through_and_the_body_s_normal_end_still_shuts_down() -> None:
    stack = RecordingStack()
    with pytest.raises(ZeroDivisionError), stack_lifetime(stack, (TrialFailed,)):
        _ = 1 / 0
    assert stack.shutdowns == 1
    with stack_lifetime(stack, (TrialFailed,)):
        pass
    assert stack.shutdowns == 2
