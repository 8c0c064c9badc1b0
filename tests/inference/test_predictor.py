"""``inference.Predictor`` on every input kind, against torch's forward as the oracle (within 1e-5)."""

from __future__ import annotations

import csv
import gzip

import numpy as np
import onnx
import pytest
from mnist_oracle import torch_probabilities, write_idx
from PIL import Image

from inference import InputError, ModelLoadError, Predictor

TOL = 1e-5


def _probabilities(predictions) -> np.ndarray:
    return np.asarray([p.probabilities for p in predictions])


def test_card_is_read_from_the_file(mnist_model):
    card = Predictor(mnist_model[0]).card
    assert (card.model, card.input_shape, card.run_id, card.server_round, card.accuracy) == (
        "mnist_cnn", (1, 28, 28), "run-1", 3, 0.5)
    assert card.normalization is not None and card.normalization.mean == (0.1307,)


def test_idx_gz_png_and_folder_inputs_match_torch(mnist_model, mnist_pixels, tmp_path):
    data, params = mnist_model
    expected = torch_probabilities(params, mnist_pixels)
    idx = write_idx(tmp_path / "t10k-images-idx3-ubyte", mnist_pixels)
    (tmp_path / "images-idx3-ubyte.gz").write_bytes(gzip.compress(idx.read_bytes()))
    folder = tmp_path / "pngs" / "sub"
    folder.mkdir(parents=True)
    for i, image in enumerate(mnist_pixels):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    predictor = Predictor(data, threads=1)
    for paths in ([idx], [tmp_path / "images-idx3-ubyte.gz"], [tmp_path / "pngs"],
                  sorted(folder.glob("*.png"))):
        predictions = predictor.predict_paths(paths)
        assert len(predictions) == len(mnist_pixels)
        assert np.abs(_probabilities(predictions) - expected).max() <= TOL
        assert [p.index for p in predictions] == list(expected.argmax(1))
        assert all(p.label == str(p.index) for p in predictions)
    assert predictor.predict_paths([idx])[5].input == f"{idx}[5]"


def test_rgb_and_resized_images_are_converted_to_the_model_input(mnist_model, mnist_pixels, tmp_path):
    data, params = mnist_model
    Image.fromarray(mnist_pixels[0]).convert("RGB").save(tmp_path / "rgb.png")
    [p] = Predictor(data).predict_paths([tmp_path / "rgb.png"])
    assert np.abs(np.asarray(p.probabilities) - torch_probabilities(params, mnist_pixels[:1])[0]).max() <= TOL
    Image.fromarray(mnist_pixels[0]).resize((56, 56)).save(tmp_path / "big.png")
    [big] = Predictor(data).predict_paths([tmp_path / "big.png"])
    assert len(big.probabilities) == 10


def test_npz_and_csv_inputs(mnist_model, mnist_pixels, tmp_path):
    data, params = mnist_model
    expected = torch_probabilities(params, mnist_pixels)
    np.savez(tmp_path / "pixels.npz", x=mnist_pixels)  # uint8: pixels, normalised by the predictor
    ready = ((mnist_pixels.astype(np.float32) / 255.0 - 0.1307) / 0.3081)
    np.savez(tmp_path / "ready.npz", x_train=ready[:2], x_test=ready)  # float: model-ready
    with open(tmp_path / "rows.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([f"p{i}" for i in range(784)] + ["label"])
        writer.writerows([[repr(float(v)) for v in row] + [7] for row in ready.reshape(len(ready), -1)])
    predictor = Predictor(data)
    for name in ("pixels.npz", "ready.npz", "rows.csv"):
        predictions = predictor.predict_paths([tmp_path / name])
        assert np.abs(_probabilities(predictions) - expected).max() <= TOL, name
    assert predictor.predict_paths([tmp_path / "rows.csv"])[0].input == f"{tmp_path / 'rows.csv'}:2"
    assert predictor.predict_paths([tmp_path / "ready.npz"])[0].input.endswith("ready.npz:x_test[0]")


def test_to_json_has_the_contract_keys(mnist_model, mnist_pixels, tmp_path):
    np.savez(tmp_path / "x.npz", mnist_pixels[:2])
    [first, _] = Predictor(mnist_model[0]).predict_paths([tmp_path / "x.npz"])
    row = first.to_json()
    assert set(row) == {"input", "label", "probabilities"} and sum(row["probabilities"]) == pytest.approx(1.0)


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return path


@pytest.mark.parametrize("name, content, message", [
    ("broken.png", b"\x89PNG\r\n\x1a\nnot really", "not a readable image"),
    ("notes.txt", "hello", "unknown input type"),
    ("small.npz", None, r"samples are \(1, 8, 8\)"),
    ("two.npz", None, "put the images in one array"),
    ("labels-idx1-ubyte", bytes([0, 0, 8, 1, 0, 0, 0, 2, 3, 4]), "holds no images"),
    ("short-idx3-ubyte", bytes([0, 0, 8, 3, 0, 0, 0, 9]), "truncated header"),
    ("rows.csv", "a,b\n1,2,3\n", "3 fields but the header has 2"),
    ("width.csv", "a,b\n1,2\n", "2 feature columns do not fit shape"),
    ("bad.npz", b"PK\x03\x04garbage", "not a readable .npz"),
])
def test_bad_inputs_are_clear_errors(mnist_model, tmp_path, name, content, message):
    if name == "small.npz":
        np.savez(tmp_path / name, x=np.zeros((2, 8, 8), np.uint8))
        path = tmp_path / name
    elif name == "two.npz":
        np.savez(tmp_path / name, a=np.zeros(2), b=np.zeros(2))
        path = tmp_path / name
    else:
        path = _write(tmp_path, name, content)
    with pytest.raises(InputError, match=message):
        Predictor(mnist_model[0]).predict_paths([path])


def test_missing_input_and_empty_folder(mnist_model, tmp_path):
    predictor = Predictor(mnist_model[0])
    with pytest.raises(InputError, match="no such file or folder"):
        predictor.predict_paths([tmp_path / "nope.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        predictor.predict_paths([tmp_path / "empty"])


def test_bad_model_files_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot read the model file"):
        Predictor(tmp_path / "missing.onnx")
    with pytest.raises(ModelLoadError, match="cannot load it as an ONNX model"):
        Predictor(b"garbage, not protobuf")
    plain = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["input"], ["y"])], "plain",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]),
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    plain.ir_version = 8
    with pytest.raises(ModelLoadError, match="no feddst.card_version metadata"):
        Predictor(plain.SerializeToString())


def test_images_need_a_recorded_normalisation(tmp_path, mnist_pixels):
    from feddst_core.models import get_model_spec
    from feddst_core.onnx_export import export_model
    from feddst_core.strategies import FedStrategy, StrategyConfig

    spec = get_model_spec("mnist_cnn")
    state = FedStrategy(spec, StrategyConfig()).initialize(0)
    predictor = Predictor(export_model(spec, state.params, state.masks, dataset="csv"))
    Image.fromarray(mnist_pixels[0]).save(tmp_path / "a.png")
    with pytest.raises(InputError, match="records no input normalisation"):
        predictor.predict_paths([tmp_path / "a.png"])
