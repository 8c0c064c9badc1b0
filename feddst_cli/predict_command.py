"""``feddst predict``: classify inputs with an exported model.onnx (onnxruntime; never imports torch)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def predict(
    inputs: list[Path] = typer.Argument(..., help="Image files, image folders (searched recursively), IDX files "
                                        "(e.g. t10k-images-idx3-ubyte.gz), .npz files (uint8 pixels, or float "
                                        "model-ready values) or .csv files (a header row, one sample per row, "
                                        "model-ready values; a 'label' column is ignored).", show_default=False),
    model: Path = typer.Option(..., "--model", "-m", help="The model.onnx, from `feddst export onnx`."),
    json_output: bool = typer.Option(False, "--json", help='Print one JSON object {"predictions": [{"input", '
                                     '"label", "probabilities"}]} instead of a table.'),
    threads: int = typer.Option(0, min=0, help="onnxruntime threads (0: all cores)."),
    top: int = typer.Option(3, min=1, help="Without --json: how many of the most probable classes to print."),
) -> None:
    """Predict the class of every input with an exported model (onnxruntime, no torch needed).

    Images are converted to the model's channels, resized to its input size, scaled to [0, 1] and
    normalised as the model's training data was (the normalisation recorded in the model file).

    Example: feddst predict --model digits.onnx photo.png more-photos/ --json
    """
    from inference import InputError, ModelLoadError, Predictor

    try:
        predictor = Predictor(model, threads=threads)
        predictions = predictor.predict_paths(inputs)
    except (ModelLoadError, InputError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    if json_output:
        typer.echo(json.dumps({"predictions": [p.to_json() for p in predictions]}))
        return
    for p in predictions:
        ranked = sorted(range(len(p.probabilities)), key=lambda k: -p.probabilities[k])[:top]
        others = ", ".join(f"{predictor.card.label(k)} {p.probabilities[k]:.3f}" for k in ranked[1:])
        typer.echo(f"{p.input}\t{p.label}\t{p.probabilities[p.index]:.3f}" + (f"\t({others})" if others else ""))
