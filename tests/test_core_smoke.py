"""Fast end-to-end checks of the core on the digits data."""

from __future__ import annotations

import torch

from robustbench_er.core.norms import perturbation_norm
from robustbench_er.models.pgd import pgd
from robustbench_er.plugins.attack import verify


def test_none_learns_digits(none_digits):
    assert none_digits.meta["clean_acc"] > 0.85


def test_pgd_breaks_undefended_and_stays_in_ball(none_digits, digits):
    m = none_digits.model
    x, y = digits.x_test[:200], digits.y_test[:200]
    for norm, eps in (("Linf", 0.3), ("L2", 2.0)):
        x_adv = pgd(m, x, y, eps, norm=norm, steps=20)
        assert float(perturbation_norm(x_adv - x, norm).max()) <= eps + 1e-5
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
        ok, _ = verify(m, x, x_adv, y, norm, torch.full((len(x),), eps))
        assert float(ok.float().mean()) > 0.8


def test_strict_numerics_turns_off_what_can_change_a_number():
    import torch

    from robustbench_er.core.device import strict_numerics

    b = torch.backends
    saved = (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.benchmark, b.cudnn.deterministic)
    try:
        b.cudnn.allow_tf32 = b.cuda.matmul.allow_tf32 = b.cudnn.benchmark = True  # torch's TF32 default and more
        b.cudnn.deterministic = False
        strict_numerics()
        assert (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.benchmark, b.cudnn.deterministic) == \
            (False, False, False, True)
    finally:
        b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.benchmark, b.cudnn.deterministic = saved
