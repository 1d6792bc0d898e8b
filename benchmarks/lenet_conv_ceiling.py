"""How fast can lenet's convolutional half train on this CPU? The evidence behind #13's lenet record.

    .venv/bin/python benchmarks/lenet_conv_ceiling.py                    # the machine's threads
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lenet_conv_ceiling.py

Times the registry's lenet up to its last spatial layer (conv1 -> pool1 -> conv2 -> pool2, ReLUs
included), forward and backward, at batch 256, with nothing else (no head, loss, optimizer or data):
an upper bound on the images/s of a whole training step. Set up as the engine trains: allocator
tuned (training.allocator.tune_allocator) and channels-last. Two ways to compute the convolutions, in
interleaved rounds (median of 5): the model's own stages (oneDNN, what training runs) and the same
weights as unfold + matmul (im2col), the usual alternative for convolutions with few channels.
"""
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.allocator import tune_allocator
from training.models import create_model

BATCH = 256
CHANNELS_LAST = True


def conv_half(model) -> nn.Module:
    """The model's stages up to pool2, as one module: the layers whose cost a step cannot avoid."""
    names = list(model.stages)
    return nn.Sequential(*[model.stages[n] for n in names[:names.index("pool2") + 1]])


def im2col_half(model):
    conv1, conv2 = model.stages["conv1"][0], model.stages["conv2"][0]

    def conv(x, c: nn.Conv2d):
        x = F.pad(x, (c.padding[1],) * 2 + (c.padding[0],) * 2)
        n, _, h, w = x.shape
        k = c.kernel_size[0]
        cols = F.unfold(x, k)  # [N, cin*k*k, out_h*out_w]
        out = c.weight.reshape(c.out_channels, -1) @ cols + c.bias.view(1, -1, 1)
        return out.view(n, c.out_channels, h - k + 1, w - k + 1)

    return lambda x: F.avg_pool2d(F.relu(conv(F.avg_pool2d(F.relu(conv(x, conv1)), 2), conv2)), 2)


def images_per_s(fn, x, params, steps: int = 30) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        fn(x).sum().backward()
        for p in params:
            p.grad = None
    return steps * x.shape[0] / (time.perf_counter() - t)


def main() -> None:
    tune_allocator()  # as fit() and train_speed.py's engine columns do: no page faults per step
    torch.manual_seed(0)
    model = create_model("lenet")
    params = list(model.parameters())
    x = torch.randn(BATCH, 1, 28, 28)
    if CHANNELS_LAST:  # the engine's default layout
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ways = {"lenet's stages (oneDNN)": conv_half(model), "unfold + matmul": im2col_half(model)}
    a, b = (fn(x) for fn in ways.values())
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()  # the same function
    for fn in ways.values():
        images_per_s(fn, x, params, steps=5)  # warm-up
    rounds = {name: [] for name in ways}
    for _ in range(5):
        for name, fn in ways.items():
            rounds[name].append(images_per_s(fn, x, params))
    for name, r in rounds.items():
        print(f"{name}: {statistics.median(r):,.0f} images/s (conv1-pool1-conv2-pool2, forward + backward, "
              f"batch {BATCH}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
