"""Forward and backward milliseconds of the 4×4, stride-2 transposed convolution in PyTorch eager
on CPU (2 threads, batch 100): oneDNN's kernel (F.conv_transpose2d) against ATen's im2col kernel
(slow_conv_transpose2d), for the decoder's layer shapes. The results agree to float rounding.

    .venv/bin/python bench/tconv_kernels.py
"""
import time

import torch
import torch.nn.functional as F

torch.manual_seed(0)
torch.set_num_threads(2)


def milliseconds(f, args):
    args = [a.detach().requires_grad_(True) for a in args]
    forward = backward = 0.0
    for step in range(210):
        t0 = time.perf_counter()
        out = f(*args)
        t1 = time.perf_counter()
        out.backward(torch.ones_like(out))
        t2 = time.perf_counter()
        if step >= 10:
            forward, backward = forward + t1 - t0, backward + t2 - t1
    return forward * 5, backward * 5


def onednn(x, w, b):
    return F.conv_transpose2d(x, w, b, stride=2, padding=1)


def im2col(x, w, b):
    return torch.ops.aten.slow_conv_transpose2d(x, w, [4, 4], b, [2, 2], [1, 1], [0, 0], [1, 1])


print("| channels in→out at side | oneDNN fwd / bwd ms | im2col fwd / bwd ms | max difference |")
print("|---|---|---|---|")
for cin, cout, side in [(16, 1, 14), (16, 3, 14), (16, 4, 14), (32, 16, 7)]:
    args = [torch.randn(100, cin, side, side), torch.randn(cin, cout, 4, 4), torch.randn(cout)]
    difference = (im2col(*args) - onednn(*args)).abs().max().item()
    (a_f, a_b), (b_f, b_b) = milliseconds(onednn, args), milliseconds(im2col, args)
    print(f"| {cin}→{cout} at {side} | {a_f:.2f} / {a_b:.2f} | {b_f:.2f} / {b_b:.2f} | {difference:.1e} |")
