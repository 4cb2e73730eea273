"""Block swapping: the frozen weights of the last N blocks live in CPU memory and visit the device for their forward
and backward, the next block's weights copied ahead on a side stream (CUDA).

Only frozen tensors move (base weights, buffers): the adapters inside a swapped block stay on the device, so the
optimiser and its state never see a CPU tensor. A swapped tensor keeps its identity (`tensor.data` is switched
between a CPU home copy, made once, and a device copy), so autograd's saved references to the weights find the
device copy again when the block's backward runs: results and gradients are those of the unswapped model.

Events, by hooks on each block (forward pre/post) and by two identity autograd functions the hooks place around
a swapped block (their backward runs just before and just after the block's backward):
  forward  block i: load i (waiting for its prefetch), prefetch i+1; after it: evict i
  backward block i: load i, prefetch i-1 (before); evict i (after)
Recomputation in backward (gradient checkpointing) runs the forward hooks inside backward: they load the block
but do not evict it or prefetch forward. At most two swapped blocks are on the device at once while the blocks
run as a chain; a block whose inputs carry no gradient (the first, with adapters only inside the blocks) is
evicted at the next forward, or by `evict_all()`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils import _pytree as pytree

from sd_lora.errors import SdLoraError

__all__ = ["BlockSwapper"]


def _in_backward() -> bool:
    # the id of the autograd graph task being executed; -1 outside backward (torch.utils.checkpoint asks the same)
    return torch._C._current_graph_task_id() != -1


class _Marker(torch.autograd.Function):
    """Identity on the tensors given; its backward calls `callback` first, so it runs when every gradient
    flowing into these tensors has arrived (before the block's backward for its outputs, after it for its
    inputs)."""

    @staticmethod
    def forward(ctx, callback, *tensors):
        ctx.callback = callback
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        ctx.callback()
        return (None, *grads)


def _mark(tree, callback):
    """`tree` with its tensors that require grad passed through one `_Marker` (unchanged without any)."""
    leaves, spec = pytree.tree_flatten(tree)
    positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor) and leaf.requires_grad]
    if not positions:
        return tree
    marked = _Marker.apply(callback, *(leaves[i] for i in positions))
    for i, tensor in zip(positions, marked):
        leaves[i] = tensor
    return pytree.tree_unflatten(leaves, spec)


class BlockSwapper:
    """Keep the frozen weights of the last `n_swap` of `blocks` (in execution order) in CPU memory and bring each
    to `device` only while it runs. Build it on the CPU model, then `move_model(model)` instead of
    `model.to(device)`: a later `.to(device)` of the model would bring every block back.

    `offload(tensor) -> home` and `load(home) -> device tensor` replace the CPU copy and the copy to the device
    (tests inject a stand-in device through them)."""

    def __init__(self, blocks: list[nn.Module], device: torch.device | str, n_swap: int, *,
                 offload: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 load: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.blocks = list(blocks)
        if not 0 <= n_swap <= len(self.blocks):
            raise SdLoraError(f"train.blocks_to_swap: must be between 0 and the model's {len(self.blocks)} "
                              f"swappable blocks, got {n_swap}")
        self.device = torch.device(device)
        self.n_swap = n_swap
        self.swapped = range(len(self.blocks) - n_swap, len(self.blocks))
        cuda = self.device.type == "cuda"
        self._offload = offload or (lambda t: t.detach().to("cpu").pin_memory() if cuda else t.detach().to("cpu"))
        self._load = load or (lambda home: home.to(self.device, non_blocking=True))
        self._stream = torch.cuda.Stream(self.device) if cuda else None
        self._tensors: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # block -> [(tensor, its home)]
        self._loaded: dict[int, object] = {}  # block -> the CUDA event its copy waits on (None on the CPU)
        self._handles = []
        for i in self.swapped:
            frozen = [t for t in (*self.blocks[i].parameters(), *self.blocks[i].buffers()) if not t.requires_grad]
            self._tensors[i] = [(t, self._offload(t.data)) for t in frozen]
            for t, home in self._tensors[i]:
                t.data = home
        for i, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_pre_hook(self._pre_forward_hook(i), with_kwargs=True))
            if i in self.swapped:
                self._handles.append(block.register_forward_hook(self._post_forward_hook(i)))

    @property
    def resident(self) -> list[int]:
        """The swapped blocks whose weights are on the device now (or being copied there)."""
        return sorted(self._loaded)

    def tensors_to_move(self, model: nn.Module) -> list[torch.Tensor]:
        """Every parameter and buffer of `model` except the swapped blocks' frozen tensors."""
        kept = {id(t) for tensors in self._tensors.values() for t, _ in tensors}
        return [t for t in (*model.parameters(), *model.buffers()) if id(t) not in kept]

    def move_model(self, model: nn.Module) -> None:
        """Move `model` to the device except the swapped blocks' frozen tensors (instead of `model.to(device)`)."""
        for t in self.tensors_to_move(model):
            t.data = t.data.to(self.device)
            if isinstance(t, nn.Parameter) and t.grad is not None:
                t.grad = t.grad.to(self.device)

    def evict_all(self) -> None:
        for i in list(self._loaded):
            self._evict(i)

    def remove(self) -> None:
        """Remove the hooks and leave every swapped block's weights in CPU memory."""
        self.evict_all()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _prefetch(self, i: int) -> None:
        if i not in self._tensors or i in self._loaded:
            return
        if self._stream is None:
            for t, home in self._tensors[i]:
                t.data = self._load(home)
            self._loaded[i] = None
            return
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            for t, home in self._tensors[i]:
                t.data = self._load(home)
            event = torch.cuda.Event()
            event.record(self._stream)
        self._loaded[i] = event

    def _ensure(self, i: int) -> None:
        if i not in self._tensors:
            return
        self._prefetch(i)
        event = self._loaded[i]
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for t, _ in self._tensors[i]:
                # copied on the side stream, used on this one: the allocator must not reuse the memory after
                # eviction until this stream's queued kernels are done with it
                t.data.record_stream(current)
            self._loaded[i] = None

    def _evict(self, i: int) -> None:
        if self._loaded.pop(i, "absent") == "absent":
            return
        for t, home in self._tensors[i]:
            t.data = home

    def _pre_forward_hook(self, i: int):
        def hook(module, args, kwargs):
            if _in_backward():  # recomputation for gradient checkpointing: this block's backward is next
                self._ensure(i)
            else:
                for stale in [j for j in self._loaded if j not in (i, i + 1)]:
                    self._evict(stale)
                self._ensure(i)
                self._prefetch(i + 1)
            if i in self._tensors and torch.is_grad_enabled():
                return _mark((args, kwargs), lambda: self._evict(i))
            return None

        return hook

    def _post_forward_hook(self, i: int):
        def hook(module, args, output):
            if not _in_backward():
                self._evict(i)
            if torch.is_grad_enabled():
                return _mark(output, lambda: self._before_backward(i))
            return None

        return hook

    def _before_backward(self, i: int) -> None:
        self._ensure(i)
        self._prefetch(i - 1)
