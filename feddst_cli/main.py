"""The ``feddst`` command: one entry point, one sub-command per job."""

from __future__ import annotations

import typer

from feddst_cli import (
    agent_command,
    cloud_command,
    compare_command,
    demo_command,
    export_command,
    predict_command,
    simulate_command,
    trial_command,
)

app = typer.Typer(
    name="feddst",
    help="FedDST Edge: federated dynamic sparse training for edge devices.\n\n"
    "Run `feddst simulate --help` to plan a field trial in-process, `feddst export onnx --help` to export a "
    "trained model and `feddst predict --help` to use one.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"feddst {version('feddst-edge')}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """FedDST Edge command line."""


app.command("simulate")(simulate_command.simulate)
app.add_typer(agent_command.app, name="agent")
app.add_typer(cloud_command.app, name="cloud")
app.command("demo")(demo_command.demo)
app.command("compare")(compare_command.compare)
app.add_typer(export_command.app, name="export")
app.command("predict")(predict_command.predict)
app.add_typer(trial_command.app, name="trial")

if __name__ == "__main__":
    app()
