"""Threads on a busy machine: SSD's Fisher diagonal and Adam training steps of LeNet-5 timed
with a given torch thread count, in both memory formats (benchmarks/RESULTS.md, "Thread count
on a busy machine"). Not a test. Run it while the machine is busy and while it is quiet:

    python benchmarks/threads_busy.py 1
    python benchmarks/threads_busy.py 2
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

from robench.data import Split
from robench.defenses.unlearning.ssd import fisher_diagonal
from robench.models import LeNet5

BATCH, BATCHES = 128, 40


def main(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.rand(BATCH * BATCHES, 1, 28, 28)
    y = torch.randint(0, 10, (BATCH * BATCHES,))
    split = Split(x, y)
    for fmt in ("contiguous", "channels_last") * 2:
        model = LeNet5()
        if fmt == "channels_last":
            model = model.to(memory_format=torch.channels_last)
        model.eval()
        start = time.perf_counter()
        fisher_diagonal(model, [split], BATCH)
        fisher = time.perf_counter() - start
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        model.train()
        start = time.perf_counter()
        for i in range(BATCHES):
            optimizer.zero_grad()
            F.cross_entropy(model(x[i * BATCH:(i + 1) * BATCH]),
                            y[i * BATCH:(i + 1) * BATCH]).backward()
            optimizer.step()
        train = time.perf_counter() - start
        print(f"{threads} thread(s) {fmt}: fisher {fisher * 1000 / BATCHES:.1f} ms/batch, "
              f"train {train * 1000 / BATCHES:.1f} ms/batch")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads())
