"""The cost stage (search/stages/cost.py): parameters and multiply-accumulates from shapes alone."""

import torch
from torch import nn

from search.stages.cost import Cost, count_cost
from spaces import MOBILENET_V3_SMALL, build_model


def test_counts_match_a_hand_count():
    # Conv 1->4, 3x3 on 8x8: 6*6 outputs * 4 channels * 9 taps; linear 144->10.
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    assert count_cost(net, in_chs=1, resolution=8) == Cost(params=4 * 9 + 4 + 144 * 10 + 10, macs=6 * 6 * 4 * 9 + 144 * 10)


def test_macs_follow_the_input_shape_given():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    assert count_cost(net, in_chs=3, resolution=8).macs == 8 * 8 * 8 * 3 * 9 + 80
    assert count_cost(net, in_chs=3, resolution=16).macs == 16 * 16 * 8 * 3 * 9 + 80


def test_mobilenet_v3_small_costs_what_its_paper_and_torchvision_say():
    cost = count_cost(build_model(MOBILENET_V3_SMALL), in_chs=3, resolution=224)
    assert cost.params == 2_542_856  # torchvision's table
    assert 56e6 <= cost.macs < 57e6  # "56M" multiply-adds (Howard et al., 2019, table 3)


def test_counting_runs_in_eval_mode_and_leaves_the_mode_as_it_was():
    # Batch-norm over one batch-1 sample is an error in training mode: counting must not train.
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 8), nn.BatchNorm1d(8))
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    count_cost(net, in_chs=1, resolution=8)
    assert net.training and all(m.training for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # running stats untouched
    net.eval()
    count_cost(net, in_chs=1, resolution=8)
    assert not net.training
