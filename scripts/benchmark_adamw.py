"""AdamW kernels on the 256 tensors of an SD1 rank-16 attention LoRA (3.19 M parameters): ms per step().

    nice .venv/bin/python scripts/benchmark_adamw.py
"""
import torch, time
torch.manual_seed(0)
# ~ SD1 attention LoRA rank 16: 128 modules x (A, B) of sizes ~ 16x320..16x1280
shapes = []
for dim, n in ((320, 40), (640, 40), (1280, 48)):
    for _ in range(n):
        shapes += [(16, dim), (dim, 16)]
params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
print(len(params), sum(p.numel() for p in params))
for kw in ({"foreach": False}, {"foreach": True}, {"fused": True}):
    opt = torch.optim.AdamW(params, lr=1e-4, **kw)
    for p in params: p.grad = torch.randn_like(p)
    for _ in range(3): opt.step()
    t = time.perf_counter()
    for _ in range(20): opt.step()
    print(kw, (time.perf_counter() - t) / 20 * 1000, "ms")
