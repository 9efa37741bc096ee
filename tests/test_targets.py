import platform

import pytest

from search.targets import TargetError, check_measurable, get_target, load_targets, normalise_arch


def test_builtin_profiles_choose_int8_formats_for_their_hardware():
    targets = load_targets()
    assert {"host", "arm", "x86", "cuda"} <= set(targets)
    assert (targets["arm"].activation_type, targets["arm"].weight_type, targets["arm"].reduce_range) == ("int8", "int8", False)
    assert (targets["x86"].activation_type, targets["x86"].weight_type, targets["x86"].reduce_range) == ("uint8", "int8", True)
    assert targets["cuda"].provider == "CUDAExecutionProvider" and "int8-static" not in targets["cuda"].quant_modes


def test_a_toml_file_overrides_a_profile_and_adds_one(tmp_path):
    path = tmp_path / "targets.toml"
    path.write_text(
        '[arm]\nthreads = 2\ndevice = "board:8470"\n\n'
        '[pi5]\narch = "aarch64"\nthreads = 4\nprovider = "CPUExecutionProvider"\n'
        'quant_modes = ["fp32", "int8-static"]\nactivation_type = "int8"\nweight_type = "int8"\n'
        "channel_rounds = [8]\nprune_ratios = [0.0, 0.5]\n"
    )
    targets = load_targets(path)
    assert targets["arm"].threads == 2 and targets["arm"].devices == ("board:8470",)
    assert targets["arm"].activation_type == "int8"  # untouched settings keep the built-in value
    assert targets["pi5"].quant_modes == ("fp32", "int8-static") and targets["pi5"].reduce_range is False


@pytest.mark.parametrize(
    "text, message",
    [
        ("[arm]\nthread = 2\n", "unknown settings"),
        ("[pi5]\narch = 'aarch64'\n", "needs"),
        ("[arm\n", "not valid TOML"),
    ],
)
def test_a_bad_profile_file_says_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "targets.toml"
    path.write_text(text)
    with pytest.raises(TargetError, match=message):
        load_targets(path)


def test_unknown_target_and_bad_device_are_refused(tmp_path):
    with pytest.raises(TargetError, match="unknown target 'riscv'"):
        get_target("riscv", path=tmp_path / "none.toml")
    with pytest.raises(TargetError, match="HOST:PORT"):
        get_target("arm", device="board", path=tmp_path / "none.toml")


def test_a_foreign_target_without_a_board_is_refused_with_how_to_start_the_agent(tmp_path):
    foreign = "x86" if normalise_arch(platform.machine()) == "aarch64" else "arm"
    with pytest.raises(TargetError, match="nas.py agent"):
        check_measurable(get_target(foreign, path=tmp_path / "none.toml"))
    check_measurable(get_target(foreign, device="127.0.0.1:8470", path=tmp_path / "none.toml"))
    check_measurable(get_target("host", path=tmp_path / "none.toml"))


def test_a_toml_file_names_a_farm_of_boards(tmp_path):
    path = tmp_path / "targets.toml"
    path.write_text('[arm]\ndevices = ["pi-1:8470", "pi-2:8470"]\n')
    arm = load_targets(path)["arm"]
    assert arm.devices == ("pi-1:8470", "pi-2:8470") and "a farm of 2 agents (pi-1:8470, pi-2:8470)" in arm.describe()
    assert get_target("arm", "pi-3:8470", path=path).devices == ("pi-3:8470",)  # --device overrides the file


@pytest.mark.parametrize(
    "text, message",
    [
        ('[arm]\ndevice = "a:1"\ndevices = ["b:2"]\n', "has both device and devices"),
        ('[arm]\ndevices = "a:1"\n', "devices must be a list"),
        ("[arm]\ndevices = []\n", "devices must be a list"),
        ('[arm]\ndevices = ["a:1", "b"]\n', "'b' is not HOST:PORT"),
        ('[arm]\ndevices = ["a:1", "a:1"]\n', "names a:1 more than once"),
    ],
)
def test_a_bad_farm_in_the_profile_file_says_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "targets.toml"
    path.write_text(text)
    with pytest.raises(TargetError, match=message) as e:
        load_targets(path)
    assert str(e.value).startswith(f"{path}: [arm]") and "\n" not in str(e.value)
