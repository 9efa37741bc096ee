import math

import pytest
import torch
import torch.nn.functional as F

from search.data import Split
from search.stages.train import TrainConfig, TrainingDiverged, distillation_loss, fit, predict_logits


def _manual(student, teacher, labels, alpha, t):
    ce = F.cross_entropy(student, labels)
    p = F.softmax(teacher / t, dim=1)
    log_q = F.log_softmax(student / t, dim=1)
    kl = (p * (torch.log(p) - log_q)).sum(1).mean()
    return (1 - alpha) * ce + alpha * t * t * kl


@pytest.mark.parametrize("alpha, t", [(0.3, 4.0), (0.0, 4.0), (1.0, 2.0), (0.5, 1.0)])
def test_distillation_loss_matches_the_formula(alpha, t):
    g = torch.Generator().manual_seed(0)
    s, te = torch.randn(16, 10, generator=g), torch.randn(16, 10, generator=g) * 3
    y = torch.randint(0, 10, (16,), generator=g)
    torch.testing.assert_close(distillation_loss(s, te, y, alpha, t), _manual(s, te, y, alpha, t))


def test_seed_recipe_is_point_seven_ce_plus_point_three_kl():
    g = torch.Generator().manual_seed(1)
    s, te = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    ce = F.cross_entropy(s, y)
    kl = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(te / 4, 1), reduction="batchmean")
    torch.testing.assert_close(distillation_loss(s, te, y, 0.3, 4.0), 0.7 * ce + 0.3 * 16 * kl)


def test_soft_term_vanishes_when_student_copies_teacher():
    logits = torch.randn(4, 10)
    y = torch.zeros(4, dtype=torch.long)
    torch.testing.assert_close(distillation_loss(logits, logits, y, 1.0, 4.0), torch.tensor(0.0), atol=1e-6, rtol=0)


def _toy_split(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    return Split(x, y)


def test_fit_learns_a_separable_toy_problem():
    data = _toy_split(256)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    loss = fit(model, data, TrainConfig(epochs=10, lr=0.05, batch_size=32))
    assert loss < 0.3


def _student_agreement(alpha: float) -> tuple[float, float]:
    """Train a student against a teacher that swaps the two classes; return how often it
    predicts (the labels, the teacher's argmax) on the training data."""
    data = _toy_split(256)
    swapped = 1 - data.y
    teacher_logits = 4.0 * F.one_hot(swapped, 2).float() - 2.0  # confident, and always wrong
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    loss = fit(model, data, TrainConfig(epochs=10, lr=0.05, batch_size=32, alpha=alpha), teacher_logits)
    assert math.isfinite(loss)
    with torch.no_grad():
        predicted = model(data.x).argmax(1)
    return (predicted == data.y).float().mean().item(), (predicted == swapped).float().mean().item()


def test_fit_with_teacher_logits_uses_distillation():
    # Pure distillation: the student follows the teacher's (swapped) labelling, row by row,
    # not the labels.
    follows_labels, follows_teacher = _student_agreement(alpha=1.0)
    assert follows_teacher >= 0.9 and follows_labels <= 0.1
    # And alpha weighs the two terms: with alpha=0 the same teacher logits are ignored.
    follows_labels, follows_teacher = _student_agreement(alpha=0.0)
    assert follows_labels >= 0.9 and follows_teacher <= 0.1


def test_diverging_loss_is_reported():
    data = _toy_split()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        fit(model, data, TrainConfig(epochs=1))


@pytest.mark.parametrize("epochs", [0.01, 0.1, 1.0])
def test_fit_handles_budgets_of_a_few_steps(epochs):
    data = _toy_split()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    assert math.isfinite(fit(model, data, TrainConfig(epochs=epochs, batch_size=16)))


def test_predict_logits_are_the_model_s_own_in_either_layout():
    # The images go in channels-last; the logits must be the plain forward pass's, and the
    # model's own weights must stay in the layout they were in.
    from spaces import build_model, parse_arch

    torch.manual_seed(0)
    model = build_model(parse_arch("in3-stem16_s2_hs-ir_k5_s2_x48_c24_se16_re-ir_k3_s1_x72_c24_hs-conv96_hs-cls10")).eval()
    images = Split(torch.randn(40, 3, 16, 16), torch.zeros(40, dtype=torch.long))
    with torch.no_grad():
        expected = model(images.pixels)
    torch.testing.assert_close(predict_logits(model, images, batch_size=16), expected, atol=1e-4, rtol=1e-4)
    assert all(p.is_contiguous() for p in model.parameters())
    model.to(memory_format=torch.channels_last)  # as fit trains it
    torch.testing.assert_close(predict_logits(model, images, batch_size=16), expected, atol=1e-4, rtol=1e-4)
