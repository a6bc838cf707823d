"""Test helper: run headstart.finetune.finetune() on a .npz dataset in a fresh process.

Used by tests/test_finetune_loop.py for the kill-and-resume test (``--kill-after-epoch K`` sends
SIGKILL to this process right after the checkpoint of epoch K is written) and for the
multi-process test (run under ``torchrun --nproc_per_node 2``).
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys

import torch
import torch.distributed as dist

torch.set_num_threads(1)
# Registered first, so it runs after headstart's own exit handler: a gloo group still alive at
# interpreter exit can abort the process (SIGABRT), and finetune() must have destroyed it by now.
atexit.register(lambda: print(f"process group at exit: {'alive' if dist.is_initialized() else 'none'}", file=sys.stderr))

from headstart.data import load_data
from headstart.engine import loop
from headstart.finetune import finetune


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--backbone", default="timm:test_efficientnet@random")
    parser.add_argument("--strategy", default=None)
    parser.add_argument("--policy", default=None)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--kill-after-epoch", type=int, default=None)
    parser.add_argument("--ema-decay", type=float, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    if args.kill_after_epoch is not None:
        original = loop.save_checkpoint

        def save_then_die(path, state):
            original(path, state)
            if path.name == "last.pt" and state["loop"]["epoch"] == args.kill_after_epoch + 1:
                os.kill(os.getpid(), signal.SIGKILL)

        loop.save_checkpoint = save_then_die

    data = load_data(args.data, seed=0)
    finetune(
        data, args.backbone, strategy=args.strategy, policy=args.policy, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, ema_decay=args.ema_decay, image_size=32, seed=0, out=args.out, resume=args.resume, device="cpu", quiet=True,
    )


if __name__ == "__main__":
    main()
