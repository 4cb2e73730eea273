"""AdaLoRA in the recipe: ranks pruned on schedule within the budget, once per optimiser step, resumable exactly."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sd_lora.adapters.adalora import RankBudget
from sd_lora.config.load import config_from_dict
from sd_lora.errors import SdLoraError
from sd_lora.train.recipe import run_training
from tests.train.conftest import tiny_config, write_dataset

NETWORK = {"type": "adalora", "preset": "full", "alpha": 4.0, "init_r": 6, "target_r": 2, "tinit": 2, "tfinal": 2}


@pytest.fixture
def data(tmp_path):
    return write_dataset(tmp_path / "data")


def _cfg(model, data, out, network=None, output=None, **train):
    return tiny_config(model, data, out, network={**NETWORK, **(network or {})},
                       train={"max_steps": 10, "learning_rate": 1e-2, **train},
                       output={"save_precision": "fp32", **(output or {})})


def test_ranks_change_and_end_within_the_budget(tiny_sd1_dir, data, tmp_path, capsys):
    result = run_training(_cfg(tiny_sd1_dir, data, tmp_path / "a"))
    out = capsys.readouterr().out
    tensors = load_file(str(result.adapter_path))
    ranks = [v.shape[0] for k, v in tensors.items() if k.endswith("lora_down.weight")]
    records = [json.loads(line) for line in (tmp_path / "a" / "logs" / "metrics.jsonl").read_text().splitlines()]
    logged = [r["adalora_ranks"] for r in records if "adalora_ranks" in r]
    modules = 79  # Linear + Conv2d modules of the tiny UNet's "full" preset
    assert "AdaLoRA budget: 79 modules x init_r 6 = 474 ranks" in out
    assert logged[0] == 6 * modules and logged[-1] <= 2 * modules and logged == sorted(logged, reverse=True)
    assert sum(ranks) <= 2 * modules and len(set(ranks)) > 1 and max(ranks) <= 6
    assert f"unet: {sum(ranks)} ranks over {modules} modules" in out  # the rank table at the end


def test_file_records_the_budget_and_inspect_shows_each_module_rank(tiny_sd1_dir, data, tmp_path, capsys):
    from sd_lora.cli.main import main

    result = run_training(_cfg(tiny_sd1_dir, data, tmp_path / "a"))
    with safe_open(str(result.adapter_path), "pt") as f:
        args = json.loads(f.metadata()["ss_network_args"])
        stored = {k.removesuffix(".lora_down.weight"): f.get_slice(k).get_shape()[0] for k in f.keys()
                  if k.endswith("lora_down.weight")}
    assert args["method"] == "adalora" and args["rank_budget"] == "158"
    assert int(args["ranks_kept"]) == sum(stored.values()) <= 158
    capsys.readouterr()
    assert main(["inspect", str(result.adapter_path), "--ranks"]) == 0
    out = capsys.readouterr().out
    for name, rank in stored.items():
        assert re.search(rf"^{name}\s+{rank}\s+\d+$", out, re.M)


def test_allocation_runs_once_per_optimiser_step_under_accumulation(tiny_sd1_dir, data, tmp_path, monkeypatch):
    steps = []
    original = RankBudget.step
    monkeypatch.setattr(RankBudget, "step", lambda self, step: (steps.append(step), original(self, step)))
    run_training(_cfg(tiny_sd1_dir, data, tmp_path / "a", max_steps=5, batch_size=1, gradient_accumulation_steps=2))
    assert steps == [1, 2, 3, 4, 5]


def test_orthogonality_term_is_added_to_the_training_loss(tiny_sd1_dir, data, tmp_path, monkeypatch):
    seen = []
    original = RankBudget.orthogonality_penalty

    def spy(self):
        value = original(self)
        seen.append(value.item())
        return value

    monkeypatch.setattr(RankBudget, "orthogonality_penalty", spy)
    run_training(_cfg(tiny_sd1_dir, data, tmp_path / "a", network={"tinit": 0, "tfinal": 0}, max_steps=3))
    assert len(seen) == 3 and all(v > 0 for v in seen)


def test_orthogonality_penalty_is_the_mean_frobenius_distance_to_identity():
    model = torch.nn.Module()
    model.peft_config = {"default": type("C", (), {"tinit": 0, "tfinal": 0, "total_step": 5, "beta1": 0.85,
                                                   "beta2": 0.85, "target_r": 1, "orth_reg_weight": 0.5})()}
    model.lora_A = torch.nn.ParameterDict({"default": torch.nn.Parameter(torch.eye(2, 3))})  # orthonormal rows
    model.lora_B = torch.nn.ParameterDict({"default": torch.nn.Parameter(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))})
    budget = RankBudget({"unet": model}, total_step=5)
    # A A^T = I; B^T B - I = diag(3, 0): norm 3; mean over the two matrices 1.5; weight 0.5
    assert budget.orthogonality_penalty().item() == pytest.approx(0.75)


def test_resume_in_the_middle_of_the_allocation_is_bit_exact(tiny_sd1_dir, data, tmp_path):
    straight = run_training(_cfg(tiny_sd1_dir, data, tmp_path / "a", output={"save_every_n_steps": 5}))
    state = tmp_path / "a" / "checkpoints" / "step-000005"
    assert (state / "custom_checkpoint_1.pkl").is_file()  # the allocator's importance averages
    resumed = run_training(_cfg(tiny_sd1_dir, data, tmp_path / "b", resume=str(state)))
    assert resumed.losses == straight.losses[5:]
    a, b = load_file(str(straight.adapter_path)), load_file(str(resumed.adapter_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_schedule_without_a_pruning_phase_is_refused(tiny_sd1_dir, data, tmp_path):
    with pytest.raises(SdLoraError, match="network.tinit .* leave no step"):
        run_training(_cfg(tiny_sd1_dir, data, tmp_path / "a", network={"tinit": 6, "tfinal": 4}))


@pytest.mark.parametrize("network, message", [
    ({"init_r": 4, "target_r": 4}, "need 1 <= target_r < init_r"),
    ({"deltaT": 0}, "network.deltaT: must be at least 1"),
    ({"beta1": 1.0}, r"network.beta1: must be in \(0, 1\)"),
    ({"dora": True}, "network.dora: only applies to type 'lora'"),
])
def test_bad_adalora_keys_are_named(network, message):
    with pytest.raises(SdLoraError, match=message):
        config_from_dict({"network": {**NETWORK, **network}})


@pytest.mark.parametrize("network", [
    {"tinit": 0, "tfinal": 1},
    {"type": "oft", "preset": "attn-mlp", "oft_block_size": 8},
    {"type": "boft", "preset": "full", "oft_block_size": 8},
], ids=["adalora", "oft", "boft"])
def test_new_methods_train_on_sdxl_with_both_text_encoders(tiny_sdxl_dir, data, tmp_path, network):
    result = run_training(_cfg(tiny_sdxl_dir, data, tmp_path / "a", network={"train_text_encoder": True, **network},
                               max_steps=4))
    assert result.steps == 4 and result.coverage.complete
    assert set(result.coverage.applied) == {"unet", "text_encoder", "text_encoder_2"}
