"""A small data-parallel PyTorch training job: real DDP, synthetic data, checkpoints, resume.

Run by the Zhisuan executor, every worker gets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``, its devices (``CUDA_VISIBLE_DEVICES`` ...) and ``ZHISUAN_CHECKPOINT_PATH``. By hand::

    python seeds/examples/train_ddp.py --steps 20                        # one process, CPU
    MASTER_ADDR=127.0.0.1 MASTER_PORT=29511 WORLD_SIZE=2 RANK=0 python seeds/examples/train_ddp.py &
    MASTER_ADDR=127.0.0.1 MASTER_PORT=29511 WORLD_SIZE=2 RANK=1 python seeds/examples/train_ddp.py

It uses CUDA when the visible devices include a real GPU (``--device auto``), the CPU otherwise; the gloo
backend works for both (``--backend nccl`` for multi-GPU runs on real hardware). Rank 0 writes
``<ZHISUAN_CHECKPOINT_PATH>/checkpoint.pt`` every ``--checkpoint-every`` steps, at the end, and when it is asked
to stop (SIGTERM: preemption, cancel); a new attempt with the same path resumes from the last checkpoint.

Every way out — done, failed on purpose, asked to stop — releases DDP and destroys the process group first: a
process that exits with gloo's worker threads still holding work aborts in C++ at interpreter shutdown
("terminate called without an active exception", SIGABRT), which would turn a finished run into a failed one.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import socket
import time
import warnings
from datetime import timedelta
from pathlib import Path

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # the CPU wheel runs without numpy

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

STOP = {"requested": False}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="total optimisation steps (across attempts)")
    parser.add_argument("--batch-size", type=int, default=64, help="per worker")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--checkpoint-every", type=int, default=10, help="steps between checkpoints (rank 0)")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep per step (demos)")
    parser.add_argument("--fail-at-step", type=int, default=None, help="exit with code 3 at this step (tests)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    return parser.parse_args()


def pick_device(choice: str) -> torch.device:
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        # Each worker sees only its own devices; its first visible one is cuda:0.
        return torch.device("cuda", 0)
    return torch.device("cpu")


def make_batch(generator: torch.Generator, batch_size: int, true_w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = torch.randn(batch_size, true_w.shape[0], generator=generator)
    y = torch.tanh(x @ true_w) + 0.01 * torch.randn(batch_size, 1, generator=generator)
    return x, y


def save_checkpoint(path: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, loss: float) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "checkpoint.pt.tmp"
    torch.save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "loss": loss}, tmp)
    os.replace(tmp, path / "checkpoint.pt")  # atomic: a crash never leaves half a checkpoint


def main() -> int:
    args = parse_args()
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    device = pick_device(args.device)
    visible = {k: v for k, v in os.environ.items() if k.endswith("VISIBLE_DEVICES")}
    print(
        f"rank {rank}/{world} host {socket.gethostname()} node {os.environ.get('ZHISUAN_NODE', '-')} "
        f"device {device}{describe(device)} visible {json.dumps(visible, sort_keys=True)} "
        f"master {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: STOP.update(requested=True))
    dist.init_process_group(args.backend, rank=rank, world_size=world, timeout=timedelta(seconds=120))
    try:
        return train(args, rank, world, device)
    finally:
        # Release DDP (its reducer holds gloo work) before the group, then the group, on every way out.
        gc.collect()
        dist.destroy_process_group()


def describe(device: torch.device) -> str:
    """`` (NVIDIA H100 80GB HBM3, GPU-…)`` for a CUDA device: which physical GPU this worker got."""
    if device.type != "cuda":
        return ""
    props = torch.cuda.get_device_properties(device)
    return f" ({props.name}, GPU-{props.uuid})"


def train(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> int:

    torch.manual_seed(0)  # same initial weights everywhere (DDP also broadcasts rank 0's)
    model = nn.Sequential(nn.Linear(16, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 1)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    start_step = 0
    ckpt_dir = Path(os.environ["ZHISUAN_CHECKPOINT_PATH"]) if os.environ.get("ZHISUAN_CHECKPOINT_PATH") else None
    if ckpt_dir is not None and (ckpt_dir / "checkpoint.pt").exists():
        state = torch.load(ckpt_dir / "checkpoint.pt", map_location="cpu")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
        print(f"rank {rank} resumed from step {start_step} (loss {state['loss']:.4f})", flush=True)
    ddp = DistributedDataParallel(model)
    true_w = torch.randn(16, 1, generator=torch.Generator().manual_seed(42))
    data = torch.Generator().manual_seed(1000 + rank * 7919 + start_step)
    loss_fn = nn.MSELoss()

    loss_value = float("nan")
    step = start_step
    began = time.monotonic()
    while step < args.steps:
        if args.fail_at_step is not None and step == args.fail_at_step:
            print(f"rank {rank} failing on purpose at step {step}", flush=True)
            return 3
        x, y = (t.to(device) for t in make_batch(data, args.batch_size, true_w))
        optimizer.zero_grad()
        loss = loss_fn(ddp(x), y)
        loss.backward()  # gradients are all-reduced across the workers here
        optimizer.step()
        step += 1
        loss_value = float(loss.detach())
        if step % args.log_every == 0 or step == args.steps:
            print(f"rank {rank} step {step}/{args.steps} loss {loss_value:.4f}", flush=True)
        stopping = STOP["requested"]
        if rank == 0 and ckpt_dir is not None and (step % args.checkpoint_every == 0 or stopping):
            save_checkpoint(ckpt_dir, step, model, optimizer, loss_value)
        if stopping:
            print(f"rank {rank} stopping at step {step} on SIGTERM", flush=True)
            return 143
        if args.step_sleep:
            time.sleep(args.step_sleep)
    if rank == 0 and ckpt_dir is not None:
        save_checkpoint(ckpt_dir, step, model, optimizer, loss_value)
    dist.barrier()
    summary = {
        "rank": rank,
        "world_size": world,
        "start_step": start_step,
        "steps": step,
        "final_loss": round(loss_value, 6),
        "seconds": round(time.monotonic() - began, 3),
        "device": str(device),
    }
    print("DONE " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
