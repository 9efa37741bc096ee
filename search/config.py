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
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

STUDIES_DIR = Path("studies")
SAMPLERS = ("nsga2", "tpe", "random")


class ConfigError(ValueError):
    """A setting is wrong; the message says which and how to fix it."""


@dataclass(frozen=True)
class StudyConfig:
    dataset: str = "digits"
    space: str = "auto"  # resolved when the study is created: compact below 16 px, mbv3 above
    target: str = "host"
    epochs: float = 8.0  # proxy training of each candidate
    # Distillation fine-tune after pruning, spread over the steps. On digits, half the
    # proxy budget brought a network pruned by 50% back to its unpruned accuracy.
    finetune_epochs: float = 4.0
    prune_steps: int = 1  # > 1: iterative pruning (prune, fine-tune, prune again)
    batch_size: int = 128
    lr: float = 0.01
    alpha: float = 0.3  # distillation weight: the seed recipe's 0.7 CE + 0.3 KL
    temperature: float = 4.0
    teacher_epochs: int = 0  # 0: chosen by the size of the data set
    calib_samples: int = 256  # int8-static calibration, from the training split
    sampler: str = "nsga2"
    population: int = 16  # NSGA-II generation size: 50 trials make three generations
    seed: int = 0
    max_latency_ms: float | None = None  # hard constraints: candidates beyond are rejected
    max_size_kb: float | None = None  # before training, from their shapes

    def __post_init__(self) -> None:
        checks = [
            (self.epochs > 0, "--epochs must be > 0"),
            (self.finetune_epochs >= 0, "--finetune-epochs must be >= 0"),
            (self.prune_steps >= 1, "--prune-steps must be >= 1"),
            (self.batch_size >= 2, "--batch-size must be >= 2"),
            (self.lr > 0, "--lr must be > 0"),
            (0.0 <= self.alpha <= 1.0, "--alpha must be in [0, 1]"),
            (self.temperature > 0, "--temperature must be > 0"),
            (self.teacher_epochs >= 0, "--teacher-epochs must be >= 0"),
            (1 <= self.calib_samples <= 100_000, "--calib-samples must be in [1, 100000]"),
            (self.sampler in SAMPLERS, f"--sampler must be one of {', '.join(SAMPLERS)}"),
            (self.population >= 2, "--population must be >= 2"),
            (self.max_latency_ms is None or self.max_latency_ms > 0, "--max-latency-ms must be > 0"),
            (self.max_size_kb is None or self.max_size_kb > 0, "--max-size-kb must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{message}, got {self._value_for(message)}")

    def _value_for(self, message: str) -> object:
        name = message.split()[0].lstrip("-").replace("-", "_")
        return getattr(self, name, "?")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StudyConfig":
        values = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def config_keys() -> set[str]:
    return {f.name for f in fields(StudyConfig)}


def default_study_name(dataset: str, target: str) -> str:
    if dataset.startswith("imagefolder:"):
        dataset = "imagefolder-" + Path(dataset.split(":", 1)[1].rstrip("/")).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{dataset}-{target}").strip("-")


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
            k: (v, getattr(stored, k)) for k, v in explicit.items() if k in config_keys() and getattr(stored, k) != v
        }
        if conflicts:
            k, (given, kept) = next(iter(conflicts.items()))
            raise ConfigError(
                f"study {study!r} was created with {k} = {kept!r}, not {given!r}: "
                f"drop --{k.replace('_', '-')} to join it, or pick a new --study"
            )
        return stored
    values = {**load_toml(study), **explicit}
    try:
        return replace(StudyConfig(), **values)
    except TypeError as e:
        raise ConfigError(str(e)) from None


def study_dir(study: str) -> Path:
    return STUDIES_DIR / study
