"""PyTorch-on-CPU twin of the native engine's training-step benchmark.

Builds the same models as engine/native (mlp-mnist, gpt-char), runs forward,
backward and an AdamW step on random data and prints one JSON object per
line: {"model", "batch", "threads", "samples_per_s", "step_ms", "blas"} with
medians over repetitions; "blas" is the libblas.so.3 this process really
loaded (read from /proc/self/maps after a product), so the caller can refuse
numbers measured against a different BLAS than the one it declares.

    torch_bench.py VOCAB THREADS...   # each thread count in turn
"""
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    def __init__(self, widths):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))

    def forward(self, x, y):
        for i, l in enumerate(self.layers):
            x = l(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return F.cross_entropy(x, y)


class Block(nn.Module):
    def __init__(self, C, nh):
        super().__init__()
        self.nh = nh
        self.ln1, self.ln2 = nn.LayerNorm(C, eps=1e-5), nn.LayerNorm(C, eps=1e-5)
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.fc, self.fcproj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        N, T, C = x.shape
        hd = C // self.nh
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(N, T, self.nh, hd).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(N, T, C)
        x = x + self.proj(y)
        return x + self.fcproj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, V, T, L, nh, C):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.blocks = nn.ModuleList(Block(C, nh) for _ in range(L))
        self.lnf = nn.LayerNorm(C, eps=1e-5)
        self.head = nn.Linear(C, V, bias=False)

    def forward(self, tok, y):
        T = tok.shape[1]
        x = self.wte(tok) + self.wpe(torch.arange(T))
        for b in self.blocks:
            x = b(x)
        logits = self.head(self.lnf(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))


def loaded_blas():
    """The file behind libblas.so.3 in this process, after one product."""
    torch.ones(4, 4) @ torch.ones(4, 4)
    paths = {l.split()[-1] for l in open("/proc/self/maps") if l.rstrip().endswith(".so.3") and "/libblas" in l}
    return ", ".join(sorted(paths)) or "none"


BLAS = None


def bench(name, model, make_batch, batch, reps, steps):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    x, y = make_batch(batch)

    def step():
        opt.zero_grad(set_to_none=False)
        model(x, y).backward()
        opt.step()

    for _ in range(2):
        step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - t0) / steps)
    times.sort()
    med = times[len(times) // 2]
    print(json.dumps({"model": name, "batch": batch, "threads": torch.get_num_threads(),
                      "samples_per_s": batch / med, "step_ms": med * 1e3, "blas": BLAS}), flush=True)


def main():
    global BLAS
    BLAS = loaded_blas()
    V = int(sys.argv[1])
    for threads in (int(a) for a in sys.argv[2:]):
        torch.set_num_threads(threads)
        run_all(V)


def run_all(V):
    torch.manual_seed(1)
    mlp = MLP([784, 1024, 1024, 10])
    mk_mlp = lambda n: (torch.randn(n, 784), torch.randint(0, 10, (n,)))
    for n in (64, 128):
        bench("mlp-mnist", mlp, mk_mlp, n, reps=5, steps=5)
    T = 64
    gpt = GPT(V, T, 4, 4, 128)
    mk_gpt = lambda n: (torch.randint(0, V, (n, T)), torch.randint(0, V, (n, T)))
    bench("gpt-char", gpt, mk_gpt, 32, reps=3, steps=2)


if __name__ == "__main__":
    main()
