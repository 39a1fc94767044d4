"""One rank of a data-parallel training run through the Python API (run by
tests/test_distributed_mpi.py under ``mpiexec -n N`` and alone, then compared).

Usage: python train_api.py OUT_DIR {plain,bn-local,bn-sync} DTYPE [--resume] [--epochs E]
Writes OUT_DIR/rank<R>.npz (parameters and buffers) and OUT_DIR/rank<R>.json
(history, evaluation, world size); after a stop request (``--stop-rank``) only
OUT_DIR/rank<R>.json with where each rank stopped.
"""
import argparse
import json
import os
import signal
import sys
import time

import numpy

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the checkout's gpuconv

import gpuconv  # noqa: E402
from gpuconv import distributed  # noqa: E402
from gpuconv.backend import to_numpy  # noqa: E402
from gpuconv.data.augment import Compose, RandomCrop, RandomHorizontalFlip  # noqa: E402
from gpuconv.data.loader import DataLoader  # noqa: E402
from gpuconv.layers import (BatchNorm2d, Conv2D, Dense, Flatten, MaxPool2D,  # noqa: E402
                            ReLU)
from gpuconv.losses import SoftmaxCrossEntropy  # noqa: E402
from gpuconv.models import Sequential  # noqa: E402
from gpuconv.optim import Adam  # noqa: E402
from gpuconv.training.callbacks import Callback  # noqa: E402
from gpuconv.training.interrupts import TrainingInterrupted  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("kind", choices=("plain", "bn-local", "bn-sync"))
p.add_argument("dtype")
p.add_argument("--epochs", type=int, default=1)
p.add_argument("--resume", action="store_true")
p.add_argument("--n", type=int, default=70)   # 70 = 4 batches of 16 + a last batch of 6
p.add_argument("--batch", type=int, default=16)
p.add_argument("--augment", action="store_true")
p.add_argument("--kill-rank", type=int, default=None)   # this rank dies (SIGKILL) ...
p.add_argument("--raise-rank", type=int, default=None)  # ... or raises, at --fail-epoch
p.add_argument("--fail-epoch", type=int, default=2)
p.add_argument("--fail-step", type=int, default=2)
p.add_argument("--stop-rank", type=int, default=None)   # ... or asks for a stop (as Ctrl-C)
p.add_argument("--checkpoint-every", default="10min")   # e.g. "3steps"
p.add_argument("--device", default="cpu")            # "cuda": one GPU per rank, NCCL
p.add_argument("--sleep", type=float, default=0.0)      # per step: a run long enough to kill
args = p.parse_args()

comm = distributed.init(device=args.device)
model_device = comm.device
gpuconv.seed(3)
rng = numpy.random.default_rng(0)
images = rng.integers(0, 256, size=(args.n, 3, 8, 8), dtype=numpy.uint8)
labels = rng.integers(0, 4, size=args.n).astype(numpy.int64)

# no conv bias in front of BatchNorm: its true gradient is 0, and Adam would turn
# rounding noise in it into full-size steps
layers = [Conv2D(3, 6, 3, padding="same", bias=args.kind == "plain", dtype=args.dtype)]
if args.kind != "plain":
    layers.append(BatchNorm2d(6, dtype=args.dtype))
layers += [ReLU(), MaxPool2D(2), Flatten(), Dense(6 * 4 * 4, 4, dtype=args.dtype)]
model = Sequential(layers)
model.to(model_device)
if args.kind == "bn-sync":
    distributed.sync_batchnorm(model, comm)
augment = Compose([RandomCrop(8, 1), RandomHorizontalFlip()]) if args.augment else None
train = DataLoader((images, labels), args.batch, shuffle=True, seed=5, device=model_device,
                   dtype=args.dtype, comm=comm, augment=augment, prefetch=False)
val = DataLoader((images[:37], labels[:37]), 8, device=model_device, dtype=args.dtype, comm=comm)
opt = Adam(model, lr=1e-2)


class Fail(Callback):
    """Kill, fail or stop this rank at step --fail-step of epoch --fail-epoch."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, step, logs=None):
        time.sleep(args.sleep)
        if self.epoch == args.fail_epoch and step == args.fail_step:
            if comm.rank == args.kill_rank:
                os.kill(os.getpid(), signal.SIGKILL)
            if comm.rank == args.raise_rank:
                raise RuntimeError("planned failure of this rank")
            if comm.rank == args.stop_rank:
                raise KeyboardInterrupt  # a stop request, on this rank only


ckpt = os.path.join(args.out, "checkpoint.npz")
try:
    history = model.fit(train, args.epochs, opt, SoftmaxCrossEntropy(), val_data=val, verbose=0,
                        callbacks=[Fail()], comm=comm, checkpoint_path=ckpt,
                        checkpoint_every=args.checkpoint_every,
                        resume_from=ckpt if args.resume else None)
except TrainingInterrupted as exc:
    with open(os.path.join(args.out, f"rank{comm.rank}.json"), "w") as f:
        json.dump({"size": comm.size, "interrupted": [exc.epoch, exc.step, exc.phase,
                                                      exc.reason]}, f)
    sys.exit(0)
ev = model.evaluate(val, comm=comm)
checksum = distributed.check_identical(model, comm)
state = {k: to_numpy(v) for k, v in model.state_dict().items()}
numpy.savez(os.path.join(args.out, f"rank{comm.rank}.npz"), **state)
with open(os.path.join(args.out, f"rank{comm.rank}.json"), "w") as f:
    json.dump({"size": comm.size, "backend": comm.backend, "history": history.records,
               "evaluate": ev, "checksum": checksum}, f, default=float)
