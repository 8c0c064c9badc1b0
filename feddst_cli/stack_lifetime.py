"""How `feddst demo` and `feddst trial run` end the local stack they start (broker, coordinator, agents).

Inside ``with stack_lifetime(stack, errors):`` SIGTERM behaves as Ctrl-C. Ctrl-C or SIGTERM prints one
"interrupted" line and exits 130; an exception of ``errors`` prints ``error: <message>`` and exits 1; in
every case ``stack.shutdown()`` runs before the command returns and the previous SIGTERM handler is
restored."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import typer

EXIT_INTERRUPTED = 130  # the shell's code for a process ended by SIGINT
EXIT_FAILED = 1


class ShutsDown(Protocol):
    def shutdown(self) -> None: ...


@contextmanager
def stack_lifetime(stack: ShutsDown, errors: tuple[type[Exception], ...]) -> Iterator[None]:
    """Run the ``with`` body; on the way out shut ``stack`` down and map interrupts/errors to exit codes."""
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield
    except KeyboardInterrupt:
        typer.secho("interrupted: shutting everything down", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except errors as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_FAILED) from exc
    finally:
        stack.shutdown()
        signal.signal(signal.SIGTERM, previous)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
