"""AdaLoRA's rank allocation over every adapted component of a run, with one shared budget.

peft's `RankAllocator` scores each singular triplet (row of A, value of E, column of B) from parameters and
gradients and masks the least important E entries to zero. Its driver, `AdaLoraModel.update_and_allocate`,
is lost when adapters are injected, so the same three phases are run here: prune on schedule until
`total_step - tfinal`, fix the final pattern at that step, then keep re-applying it (the optimiser moves
masked entries away from zero again). One allocator spans the UNet and the text encoders, so the budget
`target_r x modules` is shared by all of them.
"""

from __future__ import annotations

import copy

import torch

from sd_lora.errors import SdLoraError

__all__ = ["RankBudget", "format_rank_table"]


class RankBudget:
    def __init__(self, components: dict[str, torch.nn.Module], total_step: int, adapter_name: str = "default"):
        from peft.tuners.adalora.layer import RankAllocator

        self.adapter_name = adapter_name
        self.root = torch.nn.ModuleDict(components)  # parameter names "unet.<path>.lora_E.default", ...
        config = copy.copy(next(iter(components.values())).peft_config[adapter_name])
        if config.tinit >= total_step - config.tfinal or total_step - config.tfinal < 2:
            raise SdLoraError(f"network.tinit ({config.tinit}) + network.tfinal ({config.tfinal}) leave no step of "
                              f"the {total_step}-step run for AdaLoRA to prune ranks in; lower them or train longer")
        config.total_step = total_step
        self.config = config
        self.allocator = RankAllocator(self.root, config, adapter_name)
        self.rank_pattern: dict[str, list[bool]] | None = None
        self._params = [p for n, p in self.root.named_parameters() if "lora_" in n and adapter_name in n]

    @property
    def modules(self) -> int:
        return len(self.allocator.name_set)

    def describe(self) -> str:
        c = self.config
        return (f"AdaLoRA budget: {self.modules} modules x init_r {c.init_r} = {self.allocator.init_bgt} ranks, pruned "
                f"to target_r {c.target_r} x {self.modules} = {self.allocator.target_bgt} between steps {c.tinit} and "
                f"{c.total_step - c.tfinal} of {c.total_step} (every {c.deltaT} step(s))")

    def step(self, global_step: int) -> None:
        """After the optimiser step `global_step` (1-based), with its gradients still in place."""
        final = self.config.total_step - self.config.tfinal
        for p in self._params:
            if p.grad is None:  # a module outside the graph (SDXL's unused last text-encoder layer): no importance
                p.grad = torch.zeros_like(p)
        if global_step < final:
            _, pattern = self.allocator.update_and_allocate(self.root, global_step)
            if pattern:
                self.rank_pattern = pattern
        elif global_step == final:
            _, self.rank_pattern = self.allocator.update_and_allocate(self.root, global_step, force_mask=True)
            self.allocator.reset_ipt()
        elif self.rank_pattern is not None:
            self.allocator.mask_using_rank_pattern(self.root, self.rank_pattern)

    def orthogonality_penalty(self) -> torch.Tensor:
        """adalora_orth_reg x the mean of |AA^T - I| and |B^T B - I| (Frobenius) over every module."""
        terms = []
        for name, p in self.root.named_parameters():
            if f"lora_A.{self.adapter_name}" in name:
                cov = p @ p.T
            elif f"lora_B.{self.adapter_name}" in name:
                cov = p.T @ p
            else:
                continue
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)))
        return self.config.orth_reg_weight * torch.stack(terms).mean()

    def ranks(self) -> dict[str, dict[str, int]]:
        """{component: {module path: rank}}: the triplets whose singular value is not zero."""
        out: dict[str, dict[str, int]] = {}
        suffix = f".lora_E.{self.adapter_name}"
        for name, p in self.root.named_parameters():
            if name.endswith(suffix):
                component, _, path = name[: -len(suffix)].partition(".")
                out.setdefault(component, {})[path] = int(torch.count_nonzero(p.detach()).item())
        return out

    def log_values(self, global_step: int) -> dict[str, int]:
        """The budget of `global_step` and the ranks the modules hold now, for the training log."""
        kept = sum(sum(m.values()) for m in self.ranks().values())
        return {"adalora_budget": self.allocator.budget_schedule(global_step)[0], "adalora_ranks": kept}

    def state_dict(self) -> dict:
        a = self.allocator
        return {"ipt": a.ipt, "exp_avg_ipt": a.exp_avg_ipt, "exp_avg_unc": a.exp_avg_unc,
                "rank_pattern": self.rank_pattern}

    def load_state_dict(self, state: dict) -> None:
        a = self.allocator
        a.ipt, a.exp_avg_ipt, a.exp_avg_unc = state["ipt"], state["exp_avg_ipt"], state["exp_avg_unc"]
        self.rank_pattern = state["rank_pattern"]


def format_rank_table(ranks: dict[str, dict[str, int]], init_r: int | None = None) -> str:
    """Per-module ranks as an aligned table, with the total per component."""
    lines = []
    for component, modules in ranks.items():
        width = max(len(p) for p in modules)
        lines.append(f"{component}: {sum(modules.values())} ranks over {len(modules)} modules"
                     + (f" (init_r {init_r})" if init_r else ""))
        lines += [f"  {path:<{width}}  {rank}" for path, rank in modules.items()]
    return "\n".join(lines)
