"""A study's configuration: what every trial of the study shares.

It is stored in the study's attributes when the study is created; a worker that joins
the study later (a rerun after a crash, another machine) uses the stored one, so that
every trial of a study is comparable. Where it comes from, first match wins: the
stored configuration, the command line, ``studies/<study>.toml``, the defaults here.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

STUDIES_DIR = Path("studies")
SAMPLERS = ("tpe", "nsga2", "random")
# Settings that name something on the worker's own machine: a worker joining a study may
# give another path; what must be the same (the weights' content) is checked by its hash.
MACHINE_LOCAL = {"weights"}
# The fine-tune's peak learning rate (AdamW) for one's own, trained network unless given:
# the search's 0.01 suits networks trained from scratch. On the shared CIFAR-10 ResNet-18
# (2,500 images, one epoch), 0.001 took the unpruned original from 85.3% to 75.1% and a
# uniform 0.3 prune to 70.1% (78.2% before its fine-tune); 0.0001 gave 84.8% and 80.5%.
OWN_MODEL_LR = 0.0001


class ConfigError(ValueError):
    """A setting is wrong; the message says which and how to fix it."""


def _setting(default, help: str, metavar: str = "N", choices: tuple[str, ...] | None = None):
    """A study setting: its default and its ``--help`` line live here, and only here
    (``nas.py`` makes one option of each, and the errors below name that option)."""
    return field(default=default, metadata={"help": help, "metavar": metavar, "choices": choices})


def _recorded(default):
    """What the study records beside the settings, derived from them, never given as an option."""
    return field(default=default, metadata={"recorded": True})


@dataclass(frozen=True)
class StudyConfig:
    dataset: str = _setting(
        "digits",
        "digits (embedded, no download), cifar10, mnist, fashion-mnist (with --data-dir), "
        "or imagefolder:PATH (a folder or zip with train/ and test/ or val/ of class folders)",
        metavar="NAME",
    )
    space: str = _setting(
        "auto", "search space: auto (compact up to 16 px, mbv3 above; resolved when the study is created), "
        "compact, mbv3, tiny", metavar="NAME",
    )
    resolution: int = _setting(
        0, "training and deployment resolution in pixels; images are resized on the shorter side and "
        "centre-cropped (0: the images' own, for a folder their median shorter side up to 96; resolved when the "
        "study is created)",
    )
    train_subset: int = _setting(
        0, "proxy training images per trial: a fixed class-balanced subset of the training split, drawn by "
        "--seed (0: all); finalize trains on all of them",
    )
    target: str = _setting(
        "host", "hardware profile: host, arm, x86, cuda, or one in studies/targets.toml", metavar="NAME"
    )
    epochs: float = _setting(8.0, "proxy training epochs per candidate")
    # On digits, half the proxy budget brought a network pruned by 50% back to its
    # unpruned accuracy.
    finetune_epochs: float = _setting(4.0, "distillation fine-tune after pruning, spread over the prune steps")
    prune_steps: int = _setting(1, "iterative pruning steps, fine-tuning between them")
    batch_size: int = _setting(128, "training batch size")
    lr: float = _setting(0.01, "peak learning rate of the one-cycle schedule (0.0001 with --model)", metavar="LR")
    alpha: float = _setting(0.3, "distillation weight: (1-A)*CE + A*T^2*KL", metavar="A")  # the seed recipe's
    temperature: float = _setting(4.0, "distillation temperature", metavar="T")
    teacher_epochs: int = _setting(0, "teacher training epochs (0: by data set size)")
    calib_samples: int = _setting(256, "int8-static calibration samples, from the training split")
    # TPE: over 5 seeds of 50 digits trials, its front's hypervolume beat random sampling's in every
    # seed (median 1.08x on an AMD, 1.28x over 4 seeds on a Xeon) where NSGA-II's, still in its first
    # generations, did not (0.85x); a larger good group (gamma 25%) did worse (1.04x). BENCHMARKS.md.
    sampler: str = _setting("tpe", "Optuna sampler: tpe (multivariate), nsga2 or random", metavar="NAME", choices=SAMPLERS)
    population: int = _setting(16, "NSGA-II generation size (50 trials make three generations)")
    seed: int = _setting(0, "seed of the sampler and of training")
    baselines: bool = _setting(
        True, "start a new study with hand-designed reference trials: MobileNetV3-Small at widths 0.35, 0.5, "
        "0.75 and 1.0, fp32 and int8-static, unpruned; they count towards --budget", metavar=None,
    )
    early_stop: bool = _setting(
        True, "stop a candidate during training once a complete trial at least as fast and as small is more "
        "accurate than the candidate can still become (judged from the study's own learning curves)", metavar=None,
    )
    max_latency_ms: float | None = _setting(None, "reject candidates slower than this, before training", metavar="MS")
    max_size_kb: float | None = _setting(None, "reject candidates whose file is larger, before training", metavar="KB")
    # Bring your own model: the study compresses this network instead of searching architectures.
    model: str = _setting(
        "", "compress your own network instead of searching: torchvision:NAME (resnet18, mobilenet_v2, "
        "mobilenet_v3_small, efficientnet_b0, ...) or module.path:callable (an nn.Module factory); needs --weights",
        metavar="NAME",
    )
    weights: str = _setting(
        "", "--model's trained weights: a state dict (float16 allowed) or a TorchScript file", metavar="PATH"
    )
    weights_sha256: str = _recorded("")  # of the --weights file: every worker of the study must load the same
    mean: str = _setting(
        "", "--model's input normalisation, per channel, e.g. 0.485,0.456,0.406 (default: the data set's)",
        metavar="LIST",
    )
    std: str = _setting("", "as --mean, the divisors (default: the data set's)", metavar="LIST")
    input_size: int = _setting(0, "--model's input size in pixels, square (default: the data set's resolution)")

    def __post_init__(self) -> None:
        rules = [
            ("resolution", self.resolution >= 0, ">= 0"),
            ("train_subset", self.train_subset >= 0, ">= 0"),
            ("epochs", self.epochs > 0, "> 0"),
            ("finetune_epochs", self.finetune_epochs >= 0, ">= 0"),
            ("prune_steps", self.prune_steps >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 2, ">= 2"),
            ("lr", self.lr > 0, "> 0"),
            ("alpha", 0.0 <= self.alpha <= 1.0, "in [0, 1]"),
            ("temperature", self.temperature > 0, "> 0"),
            ("teacher_epochs", self.teacher_epochs >= 0, ">= 0"),
            ("calib_samples", 1 <= self.calib_samples <= 100_000, "in [1, 100000]"),
            ("sampler", self.sampler in SAMPLERS, f"one of {', '.join(SAMPLERS)}"),
            ("population", self.population >= 2, ">= 2"),
            ("baselines", isinstance(self.baselines, bool), "true or false"),
            ("early_stop", isinstance(self.early_stop, bool), "true or false"),
            ("max_latency_ms", self.max_latency_ms is None or self.max_latency_ms > 0, "> 0"),
            ("max_size_kb", self.max_size_kb is None or self.max_size_kb > 0, "> 0"),
            ("input_size", self.input_size >= 0, ">= 0"),
        ]
        for name, ok, rule in rules:
            if not ok:
                raise ConfigError(f"{option_name(name)} must be {rule}, got {getattr(self, name)}")
        self._check_own_model()

    def _check_own_model(self) -> None:
        own = ("weights", "mean", "std", "input_size")
        if not self.model:
            given = next((k for k in own if getattr(self, k)), None)
            if given is not None:
                raise ConfigError(f"{option_name(given)} is for your own network: give --model too")
            return
        if not self.weights:
            raise ConfigError(f"--model {self.model} needs --weights: the trained network is what the study compresses")
        if self.input_size and self.resolution and self.input_size != self.resolution:
            raise ConfigError(f"--input-size {self.input_size} and --resolution {self.resolution} differ: give one")
        if bool(self.mean) != bool(self.std):
            raise ConfigError("--mean and --std go together: give both, or neither to take the data set's")
        for key in ("mean", "std"):
            if getattr(self, key):
                values = parse_floats(getattr(self, key), option_name(key))
                if key == "std" and min(values) <= 0:
                    raise ConfigError(f"--std must be > 0 per channel, got {self.std}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StudyConfig":
        values = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    """``0.485,0.456,0.406`` as numbers; ConfigError naming ``option`` otherwise."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} {text!r}: give one number per channel, separated by commas") from None


def option_name(key: str) -> str:
    """The command-line option of a setting: ``batch_size`` is ``--batch-size``."""
    return "--" + key.replace("_", "-")


def config_keys() -> set[str]:
    """The settings, which the command line and a TOML file give (not what the study records beside them)."""
    return {f.name for f in fields(StudyConfig) if not f.metadata.get("recorded")}


def default_study_name(dataset: str, target: str, model: str = "") -> str:
    """``<dataset>-<target>``; a study of one's own network adds its name (``cifar10-resnet18-host``),
    so that it never joins an architecture search of the same data."""
    if dataset.startswith("imagefolder:"):
        dataset = "imagefolder-" + Path(dataset.split(":", 1)[1].rstrip("/")).stem
    network = f"-{model.rsplit(':', 1)[-1]}" if model else ""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{dataset}{network}-{target}").strip("-")


def check_study_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):
        raise ConfigError(
            f"--study {name!r}: use letters, digits, '.', '_' and '-' (it names a folder under studies/)"
        )


def load_toml(study: str) -> dict:
    """Settings of ``studies/<study>.toml`` where it exists (keys as in StudyConfig)."""
    path = STUDIES_DIR / f"{study}.toml"
    if not path.exists():
        return {}
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    values = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = set(values) - config_keys()
    if unknown:
        raise ConfigError(f"{path}: unknown settings {sorted(unknown)}; known: {sorted(config_keys())}")
    return values


def resolve(study: str, explicit: dict, stored: StudyConfig | None) -> StudyConfig:
    """The configuration a worker runs with.

    ``explicit`` holds the settings given on the command line. Joining a stored study,
    an explicit setting that contradicts the stored one is an error rather than being
    silently ignored: the user asked for something the study cannot give.
    """
    if stored is not None:
        conflicts = {
            k: (v, getattr(stored, k)) for k, v in explicit.items()
            if k in config_keys() and k not in MACHINE_LOCAL and getattr(stored, k) != v
        }
        if conflicts:
            k, (given, kept) = next(iter(conflicts.items()))
            raise ConfigError(
                f"study {study!r} was created with {k} = {kept!r}, not {given!r}: "
                f"drop {option_name(k)} to join it, or pick a new --study"
            )
        return stored
    values = {**load_toml(study), **explicit}
    if values.get("model") and "lr" not in values:
        values["lr"] = OWN_MODEL_LR
    try:
        return replace(StudyConfig(), **values)
    except TypeError as e:
        raise ConfigError(str(e)) from None


def study_dir(study: str) -> Path:
    return STUDIES_DIR / study
