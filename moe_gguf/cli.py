"""The moe-gguf command line (typer). Each command is a thin wrapper over the module that does the work."""
from __future__ import annotations

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="moe-gguf: run Mixture-of-Experts (and dense) GGUF models on the CPU.",
)


@app.command()
def version() -> None:
    """Print the moe-gguf version."""
    from . import __version__

    typer.echo(__version__)


if __name__ == "__main__":
    app()
