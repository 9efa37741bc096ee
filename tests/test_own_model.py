"""Bring your own model (search/own_model.py, the generic pruning, spaces/compression_only.py):
torchvision's networks and a user's factory build, prune, export, quantize and are timed;
a file or a network the study cannot use is refused before anything is written."""

from __future__ import annotations

import copy
import json

import numpy as np
import optuna
import pytest
import torch
from torch import nn

import nas
from conftest import run_nas
from search.board.timing import TimingPlan
from search.data import DatasetError
from search.runner import load_study_data
from search.own_model import ModelError, build_network, file_sha256, first_mismatch, load_own_model
from search.stages.export import export_onnx
from search.stages.measure import LocalMeasurer
from search.stages.prune import layer_stages, output_layer, prune
from search.stages.quantize import quantize
from search.study import attrs
from search.study.config import StudyConfig
from search.study.objective import prune_and_finetune
from search.targets import get_target
from spaces import ModelCompression, model_compression_params, parse_model_compression, sample_model_compression

TINY = "tests.byo_models:tiny_resnet"
DIGIT = torch.zeros(1, 1, 8, 8)
SHORT = TimingPlan(sessions=1, warmup_runs=2, warmup_seconds=0.0, min_runs=5, min_seconds=0.0)


def _save(model: nn.Module, path, half: bool = False):
    state = {k: v.half() if half and v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, path)
    return path


def _conv_and_linear(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"])
def test_a_torchvision_network_prunes_exports_quantizes_and_is_timed(name, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    # float16 on disk, as a state dict shipped small often is: loaded as float32.
    weights = _save(build_network(f"torchvision:{name}", 10), tmp_path / "w.pt", half=True)
    own = load_own_model(f"torchvision:{name}", weights, 10, x)
    assert own.n_stages >= 3
    assert all(p.dtype == torch.float32 for p in own.network.parameters())

    model = prune(copy.deepcopy(own.network), 0.5, 8, x)
    assert sum(p.numel() for p in model.parameters()) < 0.4 * own.params
    layers = _conv_and_linear(model)
    assert layers[0].in_channels == 3  # the image's channels are not the network's to prune
    assert output_layer(model, x).out_features == 10  # nor the class count
    with torch.no_grad():
        assert model(x).shape == (1, 10)

    fp32 = export_onnx(model, x)
    int8 = quantize(fp32, "int8-static", calibration=np.random.default_rng(0).standard_normal((8, 3, 32, 32), dtype=np.float32),
                    calib_method="minmax", activation_type="uint8", weight_type="int8")
    assert len(int8) < 0.5 * len(fp32)
    measured = LocalMeasurer(get_target("host"), SHORT).measure(int8)
    assert measured.stats.p50_ms > 0


def test_per_stage_ratios_prune_each_stage_its_own_share():
    torch.manual_seed(0)
    model = build_network(TINY, 10).eval()
    stages = layer_stages(model, DIGIT)
    assert sorted(set(stages.values())) == [0, 1]  # 8x8, then 4x4 (the classifier runs in the last)
    widths = {m: m.weight.shape[0] for m in stages}
    prune(model, 0.0, 1, DIGIT, stage_ratios=(0.0, 0.5))
    for layer, stage in stages.items():
        if layer is model.fc:
            assert layer.out_features == 10
        elif stage == 0:
            assert layer.weight.shape[0] == widths[layer]
        else:
            assert layer.weight.shape[0] == widths[layer] // 2
    assert model.fc.in_features == 16


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # users still ship such files
def test_a_user_factory_builds_with_the_data_s_class_count_and_loads_torchscript(tmp_path):
    torch.manual_seed(0)
    original = build_network(TINY, 7).eval()
    torch.jit.script(original).save(str(tmp_path / "scripted.pt"))
    own = load_own_model(TINY, tmp_path / "scripted.pt", 7, DIGIT)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(own.network(x), original(x))
    assert (own.n_stages, own.params) == (2, sum(p.numel() for p in original.parameters()))


def test_the_first_mismatching_key_is_named_with_both_shapes():
    network = build_network(TINY, 10)
    state = build_network(TINY, 5).state_dict()
    assert first_mismatch(network, state) == "'fc.weight' is [5, 32] in the file, [10, 32] in the network"
    state = dict(network.state_dict())
    state["head.weight"] = state.pop("fc.weight")
    assert first_mismatch(network, state) == "'fc.weight' [10, 32] is not in the file"
    del state["fc.bias"], state["head.weight"]
    state["extra"] = torch.zeros(3)
    state["fc.weight"], state["fc.bias"] = network.fc.weight, network.fc.bias
    assert first_mismatch(network, state) == "'extra' [3] is in the file but not in the network"
    state.pop("extra")
    state.pop("stem.1.num_batches_tracked")  # torch fills it in: a file without it fits
    assert first_mismatch(network, state) is None


def test_the_compression_string_is_canonical_and_conditional_parameters_stay_unsampled():
    for comp in (ModelCompression(), ModelCompression(0.5, (), 8, "int8-static", "entropy", 256),
                 ModelCompression(0.0, (0.2, 0.0, 0.7), 4, "fp16")):
        assert parse_model_compression(str(comp)) == comp
    assert str(ModelCompression(0.0, (0.2, 0.0, 0.7), 4, "fp16")) == "prune0.2-0-0.7_round4_fp16"
    with pytest.raises(ValueError, match="uniform or per stage"):
        ModelCompression(0.5, (0.5, 0.5))
    with pytest.raises(ValueError, match="exactly when quantization is int8-static"):
        ModelCompression(quant="int8-static", calib_method="minmax")
    # Unpruned: no rounding drawn, one form, whichever mode was drawn (the baseline's).
    trial = optuna.trial.FixedTrial({"prune_mode": "per-stage", "prune_ratio_stage0": 0.0, "prune_ratio_stage1": 0.0,
                                     "quant": "fp32"})
    assert sample_model_compression(trial, 2, ("fp32",), (8,), (0.0, 0.5), 256) == ModelCompression()
    comp = ModelCompression(0.0, (0.5, 0.0), 8, "int8-static", "minmax", 64)
    trial = optuna.trial.FixedTrial(model_compression_params(comp))
    assert sample_model_compression(trial, 2, ("int8-static",), (8,), (0.0, 0.5), 256) == comp


@pytest.mark.parametrize(
    "factory, weights_of, message",
    [
        (TINY, lambda: build_network(TINY, 5),
         "does not fit --model tests.byo_models:tiny_resnet: 'fc.weight' is [5, 32] in the file, [10, 32] in the network"),
        (TINY, lambda: nn.Sequential(nn.Conv2d(1, 16, 3)),
         "does not fit --model tests.byo_models:tiny_resnet: 'stem.0.weight' [16, 1, 3, 3] is not in the file"),
        ("tests.byo_models:through_numpy", lambda: build_network(TINY, 10),
         "Torch-Pruning cannot prune --model tests.byo_models:through_numpy: its dependency graph found no channel"),
        ("tests.byo_models:fixed_width", lambda: build_network(TINY, 10),
         "Torch-Pruning cannot prune --model tests.byo_models:fixed_width: once pruned it does not run "
         "(shape '[1, 32]' is invalid for input of size 16)"),
        ("tests.byo_models:cumulative_max", lambda: build_network(TINY, 10),
         "--model tests.byo_models:cumulative_max does not export to ONNX: UnsupportedOperatorError"),
        ("torchvision:resnet18", lambda: build_network(TINY, 10),
         "does not fit --model torchvision:resnet18: 'conv1.weight' [64, 3, 7, 7] is not in the file"),
    ],
    ids=["shape", "key", "untraceable", "breaks-once-pruned", "not-exportable", "other-architecture"],
)
def test_a_network_the_study_cannot_use_is_refused_with_one_line_and_nothing_written(
    factory, weights_of, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    _save(weights_of(), tmp_path / "w.pt")
    assert nas.main(["--model", factory, "--weights", "w.pt", "--budget", "1", "--study", "s"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "studies").exists()  # no study, no database


def test_own_model_settings_go_together(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for args, message in (
        (["--weights", "w.pt"], "--weights is for your own network: give --model too"),
        (["--model", TINY], f"--model {TINY} needs --weights"),
        (["--model", TINY, "--weights", "w.pt", "--mean", "0.5"], "--mean and --std go together"),
        (["--model", "resnet18", "--weights", "w.pt"], "use torchvision:NAME or module.path:callable"),
        (["--model", "torchvision:resnet19", "--weights", "w.pt"], "torchvision has no classification model 'resnet19'"),
    ):
        _save(build_network(TINY, 10), tmp_path / "w.pt")
        assert nas.main([*args, "--budget", "1", "--study", "s"]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "studies").exists()


def test_a_torchvision_network_is_built_without_downloading_anything(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    assert output_layer(build_network("torchvision:mobilenet_v2", 3), torch.zeros(1, 3, 32, 32)).out_features == 3


def test_a_wrong_model_name_is_refused_before_anything_loads():
    with pytest.raises(ModelError, match="cannot import it"):
        build_network("tests.no_such_module:f", 10)
    with pytest.raises(ModelError, match="is not callable"):
        build_network("tests.byo_models:__doc__", 10)


def test_a_study_of_one_s_own_network_end_to_end_and_a_worker_with_other_weights_is_refused(tmp_path):
    """nas.py --model on digits: the original (fp32 and int8) as baselines, a compressed
    candidate, the report and a model card naming the network; then a worker with other
    weights is refused, and the study is left as it was."""
    torch.manual_seed(0)
    _save(build_network(TINY, 10), tmp_path / "w.pt")
    args = ["--model", TINY, "--weights", "w.pt", "--study", "byo", "--budget", "3", "--finetune-epochs", "0.5",
            "--calib-samples", "32", "--seed", "1", "--mean", "0.3", "--std", "0.2"]
    result = run_nas(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "baselines: the original network, 2 enqueued first (original-fp32, original-int8-static)" in result.stderr
    assert "every fine-tune is kept: no training images are left outside --train-subset" in result.stderr

    study = optuna.load_study(study_name="byo", storage=f"sqlite:///{tmp_path}/studies/byo/study.db")
    config = StudyConfig.from_json(study.user_attrs[attrs.STUDY_CONFIG])
    assert (config.model, config.weights_sha256) == (TINY, file_sha256(tmp_path / "w.pt"))
    assert config.lr == 0.0001  # a fine-tune of trained weights, unless given
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 3
    by_baseline = {t.user_attrs.get(attrs.BASELINE): t for t in complete}
    assert {"original-fp32", "original-int8-static"} <= set(by_baseline)
    assert by_baseline["original-fp32"].user_attrs[attrs.ARCH] == f"{TINY} unpruned"
    for t in complete:
        assert t.user_attrs[attrs.ARCH].startswith(TINY)
        assert t.user_attrs[attrs.TEACHER_SHA256] == config.weights_sha256  # the teacher is the original
    assert TINY in (tmp_path / "studies" / "byo" / "report" / "index.html").read_text()

    exported = run_nas(["export", "--study", "byo", "--trial", str(complete[-1].number), "--out", "card"], tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert f"`{TINY}" in (tmp_path / "card" / "README.md").read_text()
    card = json.loads((tmp_path / "card" / "card.json").read_text())
    assert (card["input"]["mean"], card["input"]["std"]) == ([0.3], [0.2])  # what the network expects, not the data's

    final = run_nas(["finalize", "--study", "byo", "--front"], tmp_path)
    assert final.returncode == 2 and "finalize trains searched architectures" in final.stderr

    _save(build_network(TINY, 10), tmp_path / "other.pt")  # same shapes, other values
    files = sorted(p.name for p in (tmp_path / "studies" / "byo").iterdir())
    teacher = run_nas(["teacher", "--study", "byo", "--weights", "w.pt"], tmp_path)
    assert teacher.returncode == 2 and teacher.stderr.strip().splitlines() == [
        f"nas.py: error: study byo compresses your own network ({TINY}): its teacher is that network, with the "
        "weights the study was created with; there is no other teacher to install or train"
    ]
    refused = run_nas([*args[:2], "--weights", "other.pt", *args[4:]], tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"nas.py: error: --weights other.pt (sha256 {file_sha256(tmp_path / 'other.pt')[:12]}) are not the weights "
        f"study byo was created with (sha256 {config.weights_sha256[:12]}): give the study's file, or start a new --study"
    ]
    assert sorted(p.name for p in (tmp_path / "studies" / "byo").iterdir()) == files
    assert len(optuna.load_study(study_name="byo", storage=f"sqlite:///{tmp_path}/studies/byo/study.db").trials) == len(study.trials)


def test_the_study_s_data_is_normalised_as_its_network_expects():
    config = StudyConfig(model=TINY, weights="w.pt", mean="0.3", std="0.2")
    data = load_study_data(config, None, "unused", False)
    assert data.val.mean == data.test.mean == (0.3,) and data.train.std == (0.2,)
    torch.testing.assert_close(data.val.batch(slice(0, 1)), (data.val.pixels[:1].float() / 255 - 0.3) / 0.2)
    with pytest.raises(DatasetError, match="--mean and --std need 1 values"):
        load_study_data(StudyConfig(model=TINY, weights="w.pt", mean="0.3,0.3,0.3", std="1,1,1"), None, "unused", False)


def test_a_trial_prunes_each_stage_its_own_share(digits):
    """What a per-stage candidate reaches: prune_and_finetune passes the stage ratios on."""
    model = build_network(TINY, 10).eval()
    config = StudyConfig(model=TINY, weights="w.pt", finetune_epochs=0)
    prune_and_finetune(model, ModelCompression(0.0, (0.0, 0.5), 1, "fp32"), config, digits.train, None, 0, 0, DIGIT)
    assert (model.stem[0].out_channels, model.down[0].out_channels) == (16, 16)


@pytest.fixture(scope="module")
def trained_tiny(digits):
    from search.stages.train import TrainConfig, fit

    torch.manual_seed(0)
    model = build_network(TINY, 10)
    fit(model, digits.train, TrainConfig(epochs=6, lr=0.01))
    return model.eval()


def test_a_fine_tune_that_lowers_the_held_out_accuracy_is_undone(digits, trained_tiny):
    """A trained network pruned lightly can lose more to a short fine-tune than to the
    pruning (the shared CIFAR-10 ResNet-18: 85.5% pruned, 75.4% after one epoch at 0.001)."""
    from search.stages.train import accuracy, predict_logits

    logits = predict_logits(trained_tiny, digits.train)
    light = ModelCompression(0.1, (), 1, "fp32")
    judged = []
    harmful = StudyConfig(model=TINY, weights="w.pt", lr=3.0)  # wrecks the weights in a few steps
    model = copy.deepcopy(trained_tiny)
    prune_and_finetune(model, light, harmful, digits.train, logits, 1, 0, DIGIT, held_out=digits.val,
                       on_judged=lambda before, after: judged.append((before, after)))
    (before, after), = judged
    assert after < before - 0.2
    unjudged = copy.deepcopy(trained_tiny)
    prune_and_finetune(unjudged, light, StudyConfig(model=TINY, weights="w.pt", finetune_epochs=0), digits.train,
                       logits, 0, 0, DIGIT)
    for kept, pruned_only in zip(model.state_dict().values(), unjudged.state_dict().values()):
        torch.testing.assert_close(kept, pruned_only)  # the pruned network, as before its fine-tune

    judged.clear()
    heavy = ModelCompression(0.5, (), 1, "fp32")
    helpful = StudyConfig(model=TINY, weights="w.pt", lr=0.01)
    model = copy.deepcopy(trained_tiny)
    prune_and_finetune(model, heavy, helpful, digits.train, logits, 2, 0, DIGIT, held_out=digits.val,
                       on_judged=lambda before, after: judged.append((before, after)))
    (before, after), = judged
    assert after > before
    assert accuracy(predict_logits(model, digits.val), digits.val.y) == pytest.approx(after)  # kept


def test_the_held_out_images_are_training_images_the_fine_tune_never_sees(digits, monkeypatch):
    from search import runner
    from search.data import balanced_subset

    subset = balanced_subset(digits.train.y, 300, seed=0)
    held_out = runner.held_out_images(digits.train, subset, seed=0)
    assert len(held_out) == min(runner.HELD_OUT_IMAGES, len(digits.train) - 300)
    seen = {bytes(p.numpy()) for p in digits.train.pixels[subset]}
    assert not any(bytes(p.numpy()) in seen for p in held_out.pixels)
    monkeypatch.setattr(runner, "HELD_OUT_IMAGES", 100)
    assert torch.bincount(runner.held_out_images(digits.train, subset, seed=0).y).tolist() == [10] * 10
    assert runner.held_out_images(digits.train, torch.arange(len(digits.train)), seed=0) is None
