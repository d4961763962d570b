"""Shared CLI helpers: turning the user's errors into one readable line and exit code 2.

Only the project's own user-facing errors (``core.errors.UserError`` and its subclasses) and the
OS errors that name a path the user gave become one line. Anything else (a ``KeyError`` or a plain
``ValueError`` from a bug) propagates with its traceback and exit code 1: a bug must not be
dressed as bad input.
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer
from rich.console import Console
from rich.markup import escape

from fetalplanes.core.errors import UserError

console = Console()
err_console = Console(stderr=True)

# Errors a user can fix (bad option, bad data, bad path): show the message, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, FileExistsError, PermissionError)


def run_app(app: typer.Typer) -> None:
    try:
        code = app(standalone_mode=False)
        # Without standalone mode click returns typer.Exit's code instead of exiting.
        if isinstance(code, int) and code:
            sys.exit(code)
    except SystemExit:
        raise
    except USER_ERRORS as exc:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        # The message is text, not markup: "[unclosed" or "[/x]" in it must print as written.
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception as exc:  # click's own usage errors (typer >= 0.29 vendors click as typer._click)
        if _is_click(exc, "ClickException"):
            exc.show()
            sys.exit(exc.exit_code)
        if _is_click(exc, "Abort"):
            sys.exit(1)
        raise


def _is_click(exc: BaseException, name: str) -> bool:
    """True when ``exc`` is click's ``name`` exception, from click itself or typer's vendored copy."""
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(exc, cls):
            return True
    return False
