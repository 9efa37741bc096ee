"""Target profiles: the hardware a model ships to, and how to measure on it.

A profile says which execution provider and how many threads to time with, which
quantization formats suit the hardware, how to round pruned channel counts, and where
to measure (this machine, a board agent at HOST:PORT, or a farm of several boards of
one kind). Built-in profiles can be overridden, or new ones added, in
``studies/targets.toml``::

    [arm]
    threads = 4
    device = "192.168.1.20:8470"            # one board, or:
    devices = ["pi-1:8470", "pi-2:8470"]    # a farm (search.board.farm)

This module imports no torch: the command line checks a target before loading it.
"""

from __future__ import annotations

import os
import platform
import tomllib
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path

TARGETS_FILE = Path("studies") / "targets.toml"

_ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def normalise_arch(machine: str) -> str:
    return _ARCH_ALIASES.get(machine.lower(), machine.lower())


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    arch: str | None  # machine architecture the latency must come from; None: wherever the search runs
    threads: int | None  # intra-op threads when timing; None or 0: one per core of the measuring machine
    provider: str
    quant_modes: tuple[str, ...]
    activation_type: str  # int8 or uint8, for int8-static
    weight_type: str
    channel_rounds: tuple[int, ...]  # pruned channel counts are multiples of one of these
    prune_ratios: tuple[float, ...]
    devices: tuple[str, ...] = ()  # HOST:PORT of each board agent (several: a farm); none: measure in this process
    # 7-bit int8-static weights: x86 without VNNI adds u8 x s8 products in saturating
    # 16-bit pairs, which cost this project's CIFAR-10 network 0.9 points of accuracy.
    reduce_range: bool = False

    def describe(self) -> str:
        if len(self.devices) > 1:
            where = f"a farm of {len(self.devices)} agents ({', '.join(self.devices)})"
        else:
            where = f"agent at {self.devices[0]}" if self.devices else "this machine"
        return f"{self.name}: {self.description}; measured on {where}"


_PRUNE_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
_CPU_QUANT = ("fp32", "fp16", "int8-dynamic", "int8-static")


def _has_vnni() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _cpu_target(name: str, description: str, arch: str | None, threads: int | None, activation_type: str,
                channel_rounds: tuple[int, ...], reduce_range: bool = False) -> Target:
    """A CPU profile: ONNX Runtime's CPU provider, every format, signed int8 weights."""
    return Target(
        name=name,
        description=description,
        arch=arch,
        threads=threads,
        provider="CPUExecutionProvider",
        quant_modes=_CPU_QUANT,
        activation_type=activation_type,
        weight_type="int8",
        channel_rounds=channel_rounds,
        prune_ratios=_PRUNE_RATIOS,
        reduce_range=reduce_range,
    )


def _host_target() -> Target:
    """This machine, timed on one thread. With a thread per core, a small network's p50 on a
    2-core cloud VM (AMD EPYC) switched between two levels 2.4x apart, for seconds at a time:
    the 50 files of a digits study varied by 28% (median CV) from one measurement to the
    next, against 0.5% on one thread, whose p50s were also 0.67x as long (median); on the
    40 files of a CIFAR-10 study, 42% against 0.3%, and a second thread was not faster at
    the median (BENCHMARKS.md). ``threads = 0`` in studies/targets.toml times with every core."""
    arch = normalise_arch(platform.machine())
    return _cpu_target(
        "host", f"this machine ({arch}, {os.cpu_count()} cores), one thread", arch=None, threads=1,
        activation_type="int8" if arch == "aarch64" else "uint8", channel_rounds=(4, 8),
        reduce_range=arch == "x86_64" and not _has_vnni(),
    )


BUILTIN_TARGETS: dict[str, Target] = {
    "host": _host_target(),
    "arm": _cpu_target(
        "arm", "64-bit ARM Cortex-A board (NEON, int8 dot product), 4 threads, signed int8 QDQ",
        arch="aarch64", threads=4, activation_type="int8", channel_rounds=(4, 8),
    ),
    "x86": _cpu_target(
        "x86", "x86-64 CPU without VNNI, 4 threads, unsigned activations / signed 7-bit weights",
        arch="x86_64", threads=4, activation_type="uint8", channel_rounds=(8, 16), reduce_range=True,
    ),
    "cuda": Target(
        name="cuda",
        description="NVIDIA GPU through ONNX Runtime's CUDA provider, fp16 allowed",
        arch=None,
        threads=1,
        provider="CUDAExecutionProvider",
        quant_modes=("fp32", "fp16"),
        activation_type="int8",
        weight_type="int8",
        channel_rounds=(8, 32),  # tensor cores want multiples of 8
        prune_ratios=_PRUNE_RATIOS,
    ),
}


class TargetError(ValueError):
    """A target name or profile file is wrong; the message says how to fix it."""


def load_targets(path: Path = TARGETS_FILE) -> dict[str, Target]:
    """The built-in profiles, overridden and extended by ``path`` where it exists."""
    targets = dict(BUILTIN_TARGETS)
    if not path.exists():
        return targets
    try:
        table = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise TargetError(f"{path} is not valid TOML: {e}") from None
    known = {f.name for f in fields(Target)} - {"name"} | {"device"}
    for name, values in table.items():
        if not isinstance(values, dict):
            raise TargetError(f"{path}: [{name}] must be a table of settings")
        unknown = set(values) - known
        if unknown:
            raise TargetError(f"{path}: [{name}] has unknown settings {sorted(unknown)}; known: {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        if "device" in values or "devices" in values:
            values["devices"] = _profile_devices(values, f"{path}: [{name}]")
        base = targets.get(name)
        if base is None:
            required = {f.name for f in fields(Target) if f.default is MISSING}
            missing = required - set(values) - {"name", "description"}
            if missing:
                raise TargetError(f"{path}: new target [{name}] needs {sorted(missing)}")
            values.setdefault("description", name)
            targets[name] = Target(name=name, **values)
        else:
            targets[name] = replace(base, **values)
    return targets


def _profile_devices(values: dict, where: str) -> tuple[str, ...]:
    """A profile's boards: ``device = "HOST:PORT"`` (one) or ``devices = [...]`` (a farm), checked."""
    if "device" in values and "devices" in values:
        raise TargetError(f"{where} has both device and devices: keep devices = [\"HOST:PORT\", ...] alone")
    given = (values.pop("device"),) if "device" in values else values["devices"]
    if not isinstance(given, tuple) or not given or not all(isinstance(d, str) for d in given):
        raise TargetError(f"{where} devices must be a list of \"HOST:PORT\" strings, e.g. [\"pi-1:8470\", \"pi-2:8470\"]")
    return check_devices(given, f"{where} devices")


def get_target(name: str, device: str | None = None, path: Path = TARGETS_FILE) -> Target:
    """The named profile, with ``device`` (HOST:PORT, or several separated by commas)
    overriding where it measures."""
    targets = load_targets(path)
    if name not in targets:
        raise TargetError(f"unknown target {name!r}; choose one of: {', '.join(targets)} (or add it to {path})")
    target = targets[name]
    if device is not None:
        target = replace(target, devices=check_devices(tuple(d.strip() for d in device.split(",")), f"--device {device!r}"))
    return target


def check_devices(devices: tuple[str, ...], where: str) -> tuple[str, ...]:
    """``devices``, each a valid HOST:PORT and none twice; ``where`` names them in an error."""
    for device in devices:
        try:
            parse_device(device)
        except TargetError:
            raise TargetError(
                f"{where}: {device!r} is not HOST:PORT; give each board as HOST:PORT, several separated by "
                f"commas, e.g. 192.168.1.20:8470,192.168.1.21:8470"
            ) from None
    twice = sorted({d for d in devices if devices.count(d) > 1})
    if twice:
        raise TargetError(f"{where} names {', '.join(twice)} more than once: give each board once")
    return devices


def parse_device(device: str) -> tuple[str, int]:
    host, sep, port = device.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TargetError(f"--device {device!r} must be HOST:PORT, e.g. 192.168.1.20:8470")
    return host, int(port)


def check_measurable(target: Target) -> None:
    """Refuse a target whose latency this run could not honestly measure.

    ``--target arm`` on an x86 host with no agent must stop before any training: timing
    the host and calling it ARM is exactly the mistake this tool exists to prevent.
    """
    if target.devices:
        return
    here = normalise_arch(platform.machine())
    if target.arch is not None and target.arch != here:
        raise TargetError(
            f"target {target.name} needs latency measured on {target.arch}, but this machine is {here}: "
            f"start the agent on the board (python nas.py agent --host 0.0.0.0 --port 8470 --token SECRET) "
            f"and pass --device BOARD:8470 --token SECRET"
        )
    if target.provider != "CPUExecutionProvider":
        import onnxruntime as ort

        if target.provider not in ort.get_available_providers():
            raise TargetError(
                f"target {target.name} needs ONNX Runtime's {target.provider}, which this install lacks "
                f"(has {', '.join(ort.get_available_providers())}); measure on a machine that has it with --device"
            )
