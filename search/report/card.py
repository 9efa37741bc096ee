"""The hand-over of one model: its ONNX file, a card that says what it expects and what it
was measured at, and a runnable snippet (``nas.py export``).

A card is data first (:func:`model_card`, a dict written as ``card.json``); the README
and ``predict.py`` are drawn from it. Everything comes from the study's database: the
trial's attributes and the study's record of its data (``attrs.STUDY_DATA``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import onnxruntime as ort

from ..study import attrs
from ..study.config import ConfigError
from ..study.storage import DeployedModel

MODEL_FILE = "model.onnx"
SNIPPET_FILE = "predict.py"

# Preprocessing as search.data applies it at decode time (JPEG drafted near the size
# wanted, shorter side resized bilinearly, centre crop), then as Split.batch normalises.
SNIPPET = '''"""Predict the class of an image with {model}: python predict.py IMAGE"""
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

CLASSES = {classes!r}
MODE, RESIZE_TO, CROP = {mode!r}, {resize_to}, {crop}
MEAN, STD = np.array({mean!r}, np.float32), np.array({std!r}, np.float32)
session = ort.InferenceSession(str(Path(__file__).with_name({model!r})))


def scaled(size):
    return tuple(max(RESIZE_TO, round(s * (RESIZE_TO / min(size)))) for s in size)


def predict(path):
    img = Image.open(path)
    img.draft(MODE, scaled(img.size))  # JPEG: decode at a reduced scale, as training did
    img = img.convert(MODE)
    if scaled(img.size) != img.size:
        img = img.resize(scaled(img.size), Image.BILINEAR)
    left, top = (img.width - CROP) // 2, (img.height - CROP) // 2
    pixels = np.atleast_3d(np.asarray(img.crop((left, top, left + CROP, top + CROP)), np.float32))
    x = ((pixels / 255 - MEAN) / STD).transpose(2, 0, 1)[None].astype({dtype!r})
    return CLASSES[int(session.run(None, {{{input_name!r}: x}})[0].argmax())]


if __name__ == "__main__":
    print(predict(sys.argv[1]))
'''


def model_card(study: str, trial: int, deployed: DeployedModel, final: bool = False) -> dict:
    """What the exported file expects and what it was measured at, from the study's records."""
    data = deployed.study_attrs.get(attrs.STUDY_DATA)
    if data is None:
        raise ConfigError(
            f"study {study} has no record of its data (it predates model cards); record it by resuming the "
            f"study once (python nas.py --study {study} --budget N, N its complete trials) or with: "
            f"python nas.py report --study {study}"
        )
    record = deployed.record
    session = ort.InferenceSession(deployed.onnx, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    if final:
        test = record.get(attrs.ACCURACY_TEST)
    else:
        test = deployed.study_attrs.get(attrs.STUDY_TEST_ACCURACY, {}).get(str(trial))
    measured_on = record.get(attrs.MEASURED_ON, {})
    return {
        "study": study,
        "trial": trial,
        "final": final,
        "file": MODEL_FILE,
        "sha256": hashlib.sha256(deployed.onnx).hexdigest(),
        "size_kb": round(len(deployed.onnx) / 1024, 1),
        "architecture": record.get(attrs.ARCH),
        "compression": record.get(attrs.COMPRESSION),
        "params": record.get(attrs.PARAMS),
        "macs": record.get(attrs.MACS),
        "input": {
            "name": inp.name,
            "shape": [d if isinstance(d, int) else 1 for d in inp.shape],
            "dtype": "float16" if inp.type == "tensor(float16)" else "float32",
            "layout": "NCHW",
            "channels": data["channels"],
            "resize_shorter_side_to": data["resize_to"],
            "centre_crop": data["resolution"],
            "scale": "pixel / 255",
            "mean": data["mean"],
            "std": data["std"],
        },
        "classes": data["classes"],
        "data": {"name": data["name"], "images": data["images"], "fingerprint": data["fingerprint"]},
        "accuracy": {
            "validation": record.get(attrs.ACCURACY),
            "test": test,
            "on_target": record.get(attrs.ACCURACY_ON_TARGET),
            "before_quantization": record.get(attrs.ACCURACY_BEFORE_QUANT),
        },
        "latency_ms": {"p50": record.get(attrs.LATENCY_P50), "p90": record.get(attrs.LATENCY_P90)},
        "measured_on": measured_on,
        "onnxruntime": measured_on.get("onnxruntime", ort.__version__),
    }


def snippet(card: dict) -> str:
    inp = card["input"]
    return SNIPPET.format(
        model=card["file"], classes=card["classes"], mode="L" if inp["channels"] == "grey" else "RGB",
        resize_to=inp["resize_shorter_side_to"], crop=inp["centre_crop"], mean=inp["mean"], std=inp["std"],
        dtype=inp["dtype"], input_name=inp["name"],
    )


def readme(card: dict) -> str:
    inp, acc, lat, where = card["input"], card["accuracy"], card["latency_ms"], card["measured_on"]

    def pct(v):
        return "not measured" if v is None else f"{100 * v:.2f}%"

    place = f"{where.get('cpu', '?')} ({where.get('arch', '?')}, {where.get('threads', '?')} threads, via {where.get('via', '?')})"
    if where.get("emulated"):
        place += ", EMULATED: not the board's own timing"
    kind = "finalized candidate of trial" if card["final"] else "trial"
    lines = [
        f"# {card['data']['name']} classifier: {kind} {card['trial']} of study {card['study']}",
        "",
        f"`{card['file']}` ({card['size_kb']} KB, sha256 `{card['sha256'][:16]}...`), {card['compression']}, "
        f"{card['params']:,} parameters, {card['macs']:,} MACs.",
        "",
        "| | |",
        "|---|---|",
        f"| input | `{inp['name']}`, {inp['dtype']} {inp['shape']} ({inp['layout']}), {inp['channels']} |",
        f"| preprocessing | shorter side to {inp['resize_shorter_side_to']} px (bilinear), centre crop {inp['centre_crop']} px, "
        f"pixel / 255, minus mean {_round(inp['mean'])}, divided by std {_round(inp['std'])} |",
        f"| classes | {', '.join(card['classes'])} |",
        f"| accuracy of this file | validation {pct(acc['validation'])}, test {pct(acc['test'])}, "
        f"on the target's kernels {pct(acc['on_target'])}; before quantization {pct(acc['before_quantization'])} |",
        f"| latency, batch 1 | p50 {lat['p50']:.3f} ms, p90 {lat['p90']:.3f} ms, on {place} |",
        f"| ONNX Runtime | {card['onnxruntime']} |",
        f"| architecture | `{card['architecture']}` |",
        "",
        f"Run it on one image (`{SNIPPET_FILE}`, beside the model; needs numpy, onnxruntime and Pillow):",
        "",
        "```python",
        snippet(card).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _round(values) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse to write into a folder that holds something, unless ``force``."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder to write the model and its card into")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out {out} exists and is not empty; choose another folder or add --force to replace it")


def write_export(out: Path, deployed: DeployedModel, card: dict, force: bool = False) -> None:
    """The model, card.json, README.md and predict.py in ``out``, written whole or not at all."""
    check_out_dir(out, force)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / MODEL_FILE).write_bytes(deployed.onnx)
    (staging / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (staging / "README.md").write_text(readme(card))
    (staging / SNIPPET_FILE).write_text(snippet(card))
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
