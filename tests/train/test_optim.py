import math

import pytest
import torch

from sd_lora.config.train import TrainConfig
from sd_lora.errors import SdLoraError
from sd_lora.train.optim import build_lr_scheduler, build_optimizer, param_groups


class Adapted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lora_A = torch.nn.Linear(4, 2)
        self.lora_B = torch.nn.Linear(2, 4)
        self.frozen = torch.nn.Linear(4, 4).requires_grad_(False)


def _lrs(name, total=20, warmup=4, **kw):
    cfg = TrainConfig(lr_scheduler=name, lr_warmup_steps=warmup, learning_rate=1.0, **kw)
    opt = build_optimizer(param_groups({"unet": Adapted()}, cfg), cfg, torch.device("cpu"))
    sched = build_lr_scheduler(opt, cfg, total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_constant_with_warmup_formula():
    lrs = _lrs("constant", warmup=4)
    assert lrs[:5] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0]) and lrs[-1] == 1.0


def test_linear_formula():
    lrs = _lrs("linear", total=20, warmup=4)
    for step in range(4, 20):
        assert lrs[step] == pytest.approx((20 - step) / 16)


def test_cosine_formula():
    lrs = _lrs("cosine", total=20, warmup=0)
    for step in range(20):
        assert lrs[step] == pytest.approx(0.5 * (1 + math.cos(math.pi * step / 20)), abs=1e-9)


def test_cosine_with_restarts_formula():
    lrs = _lrs("cosine_with_restarts", total=20, warmup=0, lr_scheduler_num_cycles=2)
    for step in range(20):
        progress = step / 20
        assert lrs[step] == pytest.approx(0.5 * (1 + math.cos(math.pi * ((2 * progress) % 1.0))), abs=1e-9)


def test_polynomial_formula():
    lrs = _lrs("polynomial", total=20, warmup=0, lr_scheduler_power=2.0)
    lr_end = 1e-7  # diffusers' default end value
    for step in range(20):
        assert lrs[step] == pytest.approx((1.0 - lr_end) * (1 - step / 20) ** 2 + lr_end, rel=1e-6)


def test_separate_lrs_and_loraplus_ratio_for_b():
    cfg = TrainConfig(learning_rate=1e-4, unet_lr=2e-4, text_encoder_lr=5e-5, loraplus_lr_ratio=16)
    groups = param_groups({"unet": Adapted(), "text_encoder": Adapted()}, cfg)
    by_name = {g["name"]: g for g in groups}
    assert by_name["unet"]["lr"] == 2e-4 and by_name["unet_lora_B"]["lr"] == pytest.approx(2e-4 * 16)
    assert by_name["text_encoder"]["lr"] == 5e-5 and by_name["text_encoder_lora_B"]["lr"] == pytest.approx(5e-5 * 16)
    assert sum(len(g["params"]) for g in groups) == 8  # frozen weights never reach the optimiser


def test_adafactor_builds_with_fixed_lr():
    cfg = TrainConfig(optimizer="adafactor", learning_rate=1e-3)
    opt = build_optimizer(param_groups({"unet": Adapted()}, cfg), cfg, torch.device("cpu"))
    assert type(opt).__name__ == "Adafactor" and opt.param_groups[0]["lr"] == 1e-3


def test_adamw8bit_on_cpu_or_without_bitsandbytes_is_a_clear_error():
    cfg = TrainConfig(optimizer="adamw8bit")
    with pytest.raises(SdLoraError, match="adamw8bit"):
        build_optimizer(param_groups({"unet": Adapted()}, cfg), cfg, torch.device("cpu"))


def test_prodigy_builds_and_steps():
    cfg = TrainConfig(optimizer="prodigy", learning_rate=1.0)
    model = Adapted()
    opt = build_optimizer(param_groups({"unet": model}, cfg), cfg, torch.device("cpu"))
    before = model.lora_A.weight.detach().clone()
    model.lora_B(model.lora_A(torch.randn(3, 4))).pow(2).sum().backward()
    opt.step()
    assert type(opt).__name__ == "Prodigy" and not torch.equal(before, model.lora_A.weight)
