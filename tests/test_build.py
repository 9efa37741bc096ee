import optuna
import pytest
import torch
import torchvision

from spaces import MOBILENET_V3_LARGE, MOBILENET_V3_SMALL, SPACES, arch_of, build_model, sample_arch


@pytest.mark.parametrize(
    "spec, reference",
    [(MOBILENET_V3_SMALL, torchvision.models.mobilenet_v3_small), (MOBILENET_V3_LARGE, torchvision.models.mobilenet_v3_large)],
    ids=["small", "large"],
)
def test_expresses_torchvision_mobilenet_v3_exactly(spec, reference):
    ours, theirs = build_model(spec).eval(), reference().eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    # Same layers in the same order: torchvision's weights load by position and the
    # two networks compute the same function.
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert [v.shape for v in ours_sd.values()] == [v.shape for v in theirs_sd.values()]
    ours.load_state_dict(dict(zip(ours_sd.keys(), theirs_sd.values())))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_parameter_counts_at_1000_classes():
    assert sum(p.numel() for p in build_model(MOBILENET_V3_SMALL).parameters()) == 2_542_856
    assert sum(p.numel() for p in build_model(MOBILENET_V3_LARGE).parameters()) == 5_483_032


@pytest.mark.parametrize("space", sorted(SPACES))
@pytest.mark.parametrize("in_chs, resolution", [(1, 8), (3, 32)])
def test_sampled_networks_build_and_describe_themselves(space, in_chs, resolution):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    spec = sample_arch(study.ask(), SPACES[space], in_chs, resolution, 10)
    model = build_model(spec).eval()
    assert model(torch.randn(2, in_chs, resolution, resolution)).shape == (2, 10)
    assert arch_of(model) == spec


def test_every_parameter_is_sampled_in_every_trial():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    names = set()
    for _ in range(6):
        trial = study.ask()
        sample_arch(trial, SPACES["mbv3"], 3, 32, 10)
        names.add(frozenset(trial.params))
    assert len(names) == 1  # a fixed space: what NSGA-II needs
