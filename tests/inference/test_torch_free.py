"""The predict path runs without torch (and without the onnx package): only onnxruntime, numpy, Pillow.

A subprocess makes ``import torch`` and ``import onnx`` fail (``sys.modules[name] = None``) and then runs
``feddst predict --json`` and the Python API on an exported model; both must work and agree with torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from mnist_oracle import torch_probabilities

ROOT = Path(__file__).resolve().parents[2]
BLOCK = "import sys\nfor _name in ('torch', 'onnx', 'safetensors', 'sklearn'):\n    sys.modules[_name] = None\n"


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", BLOCK + code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_block_really_blocks_torch(tmp_path):
    result = _run("import torch", tmp_path)
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


def test_feddst_predict_and_the_python_api_without_torch(mnist_model, mnist_pixels, tmp_path):
    data, params = mnist_model
    (tmp_path / "model.onnx").write_bytes(data)
    np.savez(tmp_path / "x.npz", x=mnist_pixels[:4])
    expected = torch_probabilities(params, mnist_pixels[:4])
    cli = _run("sys.argv = ['feddst', 'predict', '--model', 'model.onnx', '--json', 'x.npz']\n"
               "from feddst_cli.main import app\napp()", tmp_path)
    assert cli.returncode == 0, cli.stderr
    rows = json.loads(cli.stdout)["predictions"]
    assert [r["input"] for r in rows] == [f"x.npz:x[{i}]" for i in range(4)]
    assert np.abs(np.asarray([r["probabilities"] for r in rows]) - expected).max() <= 1e-5
    api = _run("from inference import Predictor\nimport json\n"
               "print(json.dumps([p.index for p in Predictor('model.onnx').predict_paths(['x.npz'])]))\n"
               "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]", tmp_path)
    assert api.returncode == 0, api.stderr
    assert json.loads(api.stdout) == list(expected.argmax(1))


def test_without_pillow_arrays_predict_and_images_get_a_one_line_error(mnist_model, mnist_pixels, tmp_path):
    """A device may install onnxruntime and numpy only (no Pillow, docs/inference.md): .npz input still works,
    an image file is refused with exit 2 and one line saying to install Pillow."""
    from PIL import Image

    data, params = mnist_model
    (tmp_path / "model.onnx").write_bytes(data)
    np.savez(tmp_path / "x.npz", x=mnist_pixels[:2])
    Image.fromarray(mnist_pixels[0]).save(tmp_path / "seven.png")
    block = BLOCK.replace("'sklearn'", "'sklearn', 'PIL'")
    predict = "from feddst_cli.main import app\napp()"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(*inputs: str) -> subprocess.CompletedProcess:
        argv = repr(['feddst', 'predict', '--model', 'model.onnx', '--json', *inputs])
        return subprocess.run([sys.executable, "-c", f"{block}sys.argv = {argv}\n{predict}"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)

    arrays = run("x.npz")
    assert arrays.returncode == 0, arrays.stderr
    got = np.asarray([r["probabilities"] for r in json.loads(arrays.stdout)["predictions"]])
    assert np.abs(got - torch_probabilities(params, mnist_pixels[:2])).max() <= 1e-5
    image = run("seven.png")
    assert image.returncode == 2 and "Traceback" not in image.stderr, image.stderr
    assert "reading image files needs Pillow, which is not installed: pip install pillow" in image.stderr
