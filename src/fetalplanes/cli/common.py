"""Shared CLI helpers: turning expected errors into one readable line and exit code 2."""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

# Errors a user can fix (bad path, bad config, bad file): show the message, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, KeyError, PermissionError)


def run_app(app: typer.Typer) -> None:
    try:
        code = app(standalone_mode=False)
        # Without standalone mode click returns typer.Exit's code instead of exiting.
        if isinstance(code, int) and code:
            sys.exit(code)
    except SystemExit as exc:
        raise
    except USER_ERRORS as exc:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
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
    import importlib

    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(exc, cls):
            return True
    return False
