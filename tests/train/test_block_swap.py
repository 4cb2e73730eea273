"""Block swapping on the CPU with a stand-in device: while a block is evicted its frozen tensors hold NaN (the
real values live in the stand-in's store), so any use of an evicted block poisons the result; results and
gradients must be bit-identical to the unswapped model, and residency is counted at every load."""

import copy

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn
from torch.utils.checkpoint import checkpoint

from sd_lora.errors import SdLoraError
from sd_lora.train.block_swap import BlockSwapper


class StandInDevice:
    """offload/load for BlockSwapper: an evicted tensor holds NaN (its 'CPU home'), the real values come back on
    load; every load counts how many swapped blocks are on the 'device' once it is done."""

    def __init__(self):
        self.real = {}  # data_ptr of a home -> the real values
        self.owner = {}  # data_ptr of a home -> the index of its block
        self.loads = 0
        self.max_resident = 0

    def offload(self, t):
        home = torch.full_like(t, float("nan"))
        self.real[home.data_ptr()] = t.clone()
        return home

    def track(self, blocks):
        """Call after the swapper is built: which block each home belongs to."""
        self.blocks = blocks
        self.frozen = {}
        for i, block in enumerate(blocks):
            tensors = [t for t in (*block.parameters(), *block.buffers()) if t.data_ptr() in self.real]
            if tensors:
                self.frozen[i] = tensors
                self.owner.update((t.data_ptr(), i) for t in tensors)

    def resident(self, extra=()):
        """The swapped blocks holding real values in any of their frozen tensors (+ `extra`)."""
        return set(extra) | {i for i, tensors in self.frozen.items()
                             if any(t.data_ptr() not in self.real for t in tensors)}

    def load(self, home):
        self.loads += 1
        self.max_resident = max(self.max_resident, len(self.resident({self.owner[home.data_ptr()]})))
        return self.real[home.data_ptr()].clone()


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.register_buffer("shift", torch.randn(width))

    def forward(self, x, *, gate):
        return x + self.out(torch.tanh(self.lin(x) + self.shift)) * gate


class Chain(nn.Module):
    def __init__(self, n=6, width=8, ckpt=None):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width) for _ in range(n))
        self.ckpt = ckpt

    def forward(self, x, gate):
        for block in self.blocks:
            if self.ckpt is None:
                x = block(x, gate=gate)
            else:
                x = checkpoint(lambda h, b=block: b(h, gate=gate), x, use_reentrant=self.ckpt == "reentrant")
        return x


def _chain(ckpt=None):
    torch.manual_seed(0)
    model = Chain(ckpt=ckpt).requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=["lin"], init_lora_weights=False), model)
    return model


def _step(model, blocks):
    torch.manual_seed(1)
    x = torch.randn(3, 8, requires_grad=True)
    gate = torch.tensor(0.5)
    out = model(x, gate)
    out.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.detach(), x.grad, grads


def _swapped(model, blocks, n_swap):
    device = StandInDevice()
    swapper = BlockSwapper(blocks, "cpu", n_swap, offload=device.offload, load=device.load)
    device.track(blocks)
    return swapper, device


def _assert_same(a, b):
    out_a, x_a, grads_a = a
    out_b, x_b, grads_b = b
    assert torch.equal(out_a, out_b) and torch.equal(x_a, x_b)
    assert grads_a.keys() == grads_b.keys() and all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)


@pytest.mark.parametrize("n_swap", [1, 4, 6])
@pytest.mark.parametrize("ckpt", [None, "non-reentrant", "reentrant"])
def test_chain_results_and_gradients_are_bit_identical_and_at_most_two_swapped_blocks_are_resident(n_swap, ckpt):
    reference = _step(_chain(ckpt), None)
    model = _chain(ckpt)
    swapper, device = _swapped(model, list(model.blocks), n_swap)
    assert device.resident() == set()  # built: every swapped block is in its home
    for _ in range(2):  # a second step starts from the state the first one left
        model.zero_grad()
        _assert_same(_step(model, None), reference)
        assert 1 <= device.max_resident <= 2
    # each step loads each swapped block twice (forward, backward) with its 5 frozen tensors, never more: the
    # recomputation of checkpointing finds the block already there
    assert device.loads == 2 * 2 * n_swap * 5
    swapper.evict_all()
    assert device.resident() == set()


def test_without_grad_each_swapped_block_is_loaded_once_and_evicted_after_its_forward():
    model = _chain()
    with torch.no_grad():
        reference = model(torch.ones(2, 8), torch.tensor(1.0))
    swapper, device = _swapped(model, list(model.blocks), 3)
    with torch.no_grad():
        assert torch.equal(model(torch.ones(2, 8), torch.tensor(1.0)), reference)
    assert device.loads == 3 * 5 and device.resident() == set()


def test_a_missing_load_would_poison_the_result():
    # the stand-in is strict: with the hooks removed, the evicted NaN weights are used and the test can tell
    model = _chain()
    swapper, device = _swapped(model, list(model.blocks), 2)
    swapper.remove()
    assert torch.isnan(model(torch.ones(2, 8), torch.tensor(1.0))).all()


def test_adapters_stay_where_they_are_and_train():
    model = _chain()
    lora = [p for p in model.parameters() if p.requires_grad]
    before = [(p.data_ptr(), p.detach().clone()) for p in lora]
    swapper, _ = _swapped(model, list(model.blocks), 6)
    opt = torch.optim.SGD(lora, lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        _step(model, None)
        opt.step()
    assert all(p.data_ptr() == ptr and not torch.equal(p, value) for p, (ptr, value) in zip(lora, before))


def test_move_model_moves_all_but_the_swapped_frozen_tensors():
    model = _chain()
    swapper = BlockSwapper(list(model.blocks), "cpu", 2)
    moved = {id(t) for t in swapper.tensors_to_move(model)}
    for i, block in enumerate(model.blocks):
        for name, t in [*block.named_parameters(), *block.named_buffers()]:
            assert (id(t) in moved) == (i < 4 or t.requires_grad), (i, name)
    assert len(moved) == len(list(model.parameters())) + len(list(model.buffers())) - 2 * 5


@pytest.mark.parametrize("n_swap", [-1, 7])
def test_n_swap_out_of_range_is_one_clear_error(n_swap):
    model = _chain()
    with pytest.raises(SdLoraError, match="train.blocks_to_swap: must be between 0 and the model's 6 swappable"):
        BlockSwapper(list(model.blocks), "cpu", n_swap)


def _tiny_flux():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=2, num_single_layers=3,
                                   attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                   pooled_projection_dim=8, guidance_embeds=True, axes_dims_rope=(2, 2, 4))
    model.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, init_lora_weights=False,
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj"]), model)
    return model


def _flux_step(model):
    g = torch.Generator().manual_seed(2)
    out = model(hidden_states=torch.randn(1, 16, 4, generator=g), encoder_hidden_states=torch.randn(1, 5, 16, generator=g),
                pooled_projections=torch.randn(1, 8, generator=g), timestep=torch.tensor([0.5]),
                guidance=torch.tensor([1.0]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3)).sample
    out.square().mean().backward()
    return out.detach(), torch.zeros(()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("n_swap,ckpt", [(3, False), (5, False), (5, True)])
def test_flux_transformer_blocks_swap_exactly(n_swap, ckpt):
    reference_model = _tiny_flux()
    if ckpt:
        reference_model.enable_gradient_checkpointing()
    reference = _flux_step(reference_model)
    model = _tiny_flux()
    if ckpt:
        model.enable_gradient_checkpointing()
    blocks = [*model.transformer_blocks, *model.single_transformer_blocks]
    swapper, device = _swapped(model, blocks, n_swap)
    _assert_same(_flux_step(model), reference)
    # blocks 1.. get inputs that carry gradients: they leave after their backward; block 0's input carries
    # none (adapters only in blocks) and it leaves at the next forward or evict_all
    assert device.max_resident <= 2 and device.resident() <= {0}
    swapper.evict_all()
    assert device.resident() == set()


def test_unet_down_mid_and_up_blocks_swap_exactly():
    from sd_lora.models.tiny import build_tiny_pipeline

    def unet():
        torch.manual_seed(0)
        model = build_tiny_pipeline("sd1").unet.requires_grad_(False)
        inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, init_lora_weights=False,
                                           target_modules=["to_q", "to_k", "to_v", "to_out.0"]), model)
        return model

    def step(model):
        g = torch.Generator().manual_seed(2)
        out = model(torch.randn(1, 4, 16, 16, generator=g), torch.tensor([10]),
                    torch.randn(1, 7, 32, generator=g)).sample
        out.square().mean().backward()
        return out.detach(), torch.zeros(()), {n: p.grad.clone() for n, p in model.named_parameters()
                                               if p.requires_grad}

    reference = step(unet())
    model = unet()
    blocks = [*model.down_blocks, model.mid_block, *model.up_blocks]
    _, device = _swapped(model, blocks, len(blocks))
    out, _, grads = step(model)
    assert torch.equal(out, reference[0])
    # not bit-exact: a down block's outputs also feed the up blocks (skip connections), and the swapper's
    # backward marker makes autograd sum a down block's output gradients in another order (measured max
    # difference 2e-10; a chain of transformer blocks is bit-exact, above)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[2][name], rtol=1e-5, atol=1e-8)
    assert device.max_resident <= 2


def test_fp8_stored_blocks_swap_exactly():
    from sd_lora.models.fp8 import apply_weight_storage

    def model():
        flux = _tiny_flux().to(torch.bfloat16)
        for p in flux.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        apply_weight_storage(flux, "fp8_e4m3fn", torch.bfloat16)
        return flux

    reference = _flux_step(model())
    flux = model()
    blocks = [*flux.transformer_blocks, *flux.single_transformer_blocks]
    _, device = _swapped(flux, blocks, 4)
    assert any(t.dtype == torch.float8_e4m3fn for tensors in device.frozen.values() for t in tensors)
    _assert_same(_flux_step(flux), reference)
