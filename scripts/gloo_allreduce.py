#!/usr/bin/env python3
"""Baseline for averaging/cmd/allreduce-bench: PyTorch's gloo all-reduce.

n processes on 127.0.0.1 (TCP, no encryption) sum a float32 vector with
torch.distributed.all_reduce over the gloo backend. Time is the slowest
rank's all-reduce, median over the measured rounds (the first round is a
warm-up); busbw = size x 2(n-1)/n / time, as nccl-tests and allreduce-bench
compute it. Prints one JSON object.

    /usr/bin/python3 scripts/gloo_allreduce.py -n 4 -mib 64 -rounds 5

Needs torch with gloo (Debian: python3-torch).
"""
import argparse
import json
import os
import socket
import statistics
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, n, port, values, rounds, out):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=n)
    x = torch.randn(values, dtype=torch.float32)
    times = []
    for _ in range(rounds + 1):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(x)
        times.append(time.perf_counter() - t0)
    # The slowest rank's time of each round.
    t = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if rank == 0:
        out.put(t.tolist()[1:])
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=2)
    ap.add_argument("-mib", type=int, default=64)
    ap.add_argument("-rounds", type=int, default=5)
    a = ap.parse_args()
    if a.n < 2 or a.mib < 1 or a.rounds < 1:
        sys.exit("gloo_allreduce: -n must be at least 2, -mib and -rounds positive")
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    values = a.mib * (1 << 20) // 4
    procs = [ctx.Process(target=worker, args=(r, a.n, port, values, a.rounds, out)) for r in range(a.n)]
    for p in procs:
        p.start()
    times = out.get(timeout=600)
    for p in procs:
        p.join()
        if p.exitcode != 0:
            sys.exit(f"gloo_allreduce: a rank exited with {p.exitcode}")
    t = statistics.median(times)
    size = a.mib  # MiB
    print(json.dumps({"backend": "gloo", "n": a.n, "mib": a.mib, "rounds": a.rounds, "times_s": times,
                      "time_s": t, "busbw_mibps": size * 2 * (a.n - 1) / a.n / t}))


if __name__ == "__main__":
    main()
