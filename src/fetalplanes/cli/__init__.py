"""The ``fetalplanes`` command line: thin Typer wiring over library calls.

Each sub-module registers its commands; heavy libraries (torch, timm, onnxruntime) are only
imported inside the command that needs them, so ``fetalplanes --help`` stays fast and the
torch-free runtime install can still run its commands.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys

from typing import Optional

import typer

COMMAND_MODULES = ("data", "train", "explain", "deploy", "bench", "serve", "node", "reproduce")

app = typer.Typer(
    name="fetalplanes",
    help="Classify maternal-fetal ultrasound images into standard planes (FETAL_PLANES_DB).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# True in a process that `fetalplanes` itself started (main()): only then is the thread policy
# written into the environment, for OpenMP to read when torch loads. Inside another program
# (a test's CliRunner, a notebook) the host's process-wide settings are left alone.
_OWNS_PROCESS = False
# Commands that run long or serve: their thread policy is logged at INFO (a hospital engineer
# reads it in the service's or the node's log); the quick ones log it at DEBUG (`-v`), so a
# one-image `predict` or a refused file prints only its answer or its one-line error.
_LOG_THREADS = {"train", "demo", "evaluate", "explain", "bench", "stream", "serve", "dicom-node", "dicomweb",
                "reproduce"}


@app.callback()
def _setup(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="Intra-op threads for torch and ONNX Runtime (default: $FETALPLANES_THREADS, "
        "$OMP_NUM_THREADS, else one per usable core). FETALPLANES_WAIT=spin lets idle workers spin."),
) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    # Logs go to stderr: stdout carries the JSON / CSV answers of `predict --format`. Rich's
    # layout is for a terminal; into a pipe or file it would wrap each message at 80 columns,
    # so there every message is one plain line (what a script greps for a bad file or frame).
    if sys.stderr.isatty():
        handler: logging.Handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=verbose)
        fmt = "%(message)s"
    else:
        handler, fmt = logging.StreamHandler(sys.stderr), "%(levelname)s %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, handlers=[handler], force=True)
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if _OWNS_PROCESS and "--help" in sys.argv[1:]:
        # `fetalplanes CMD --help` runs nothing: no thread policy, no 50 ms core sample. (Click
        # parses the command's own options, --help among them, only after this callback.)
        return
    from fetalplanes.runtime.threads import apply_process_policy, choose_policy

    apply_process_policy(choose_policy(threads), None if _OWNS_PROCESS else {},
                         logging.INFO if ctx.invoked_subcommand in _LOG_THREADS else logging.DEBUG)


def _register() -> None:
    """Add every command group present in this checkout to ``app``; idempotent, and a group whose
    commands are already there (added by its own ``register``) is not added twice."""
    present = {getattr(c.callback, "__module__", None) for c in app.registered_commands}
    for name in COMMAND_MODULES:
        module = f"fetalplanes.cli.{name}"
        if module in present or importlib.util.find_spec(module) is None:
            continue  # registered already, or a command group not present in this checkout
        importlib.import_module(module).register(app)


def main() -> None:
    """Console entry point: expected user errors print one clear line, not a traceback."""
    global _OWNS_PROCESS
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _OWNS_PROCESS = True
    _register()
    from fetalplanes.cli.common import run_app

    run_app(app)
