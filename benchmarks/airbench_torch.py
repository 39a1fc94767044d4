#!/usr/bin/env python3
"""airbench94 in plain PyTorch, float32: the reference to compare gpuconv with.

A re-implementation of Keller Jordan's airbench94 CIFAR-10 recipe
(``legacy/airbench94.py`` in KellerJordan/cifar10-airbench: 94.01 % mean test
accuracy, with TTA, in 9.9 epochs, 3.83 s on an A100), written from the
published hyperparameters and checked line by line against that file, so that
gpuconv's own implementation can be run on the same data, machine and seeds.

    python benchmarks/airbench_torch.py --data-dir /work/data/cifar10
    python benchmarks/airbench_torch.py --width 0.25 --epochs 1 --limit 5000
    python benchmarks/airbench_torch.py --time-steps 3 --width 0.5
    python benchmarks/airbench_torch.py --evaluate-gpuconv RUN/model.npz

The recipe (every number is the source's unless marked "here")
---------------------------------------------------------------
Network (``build_net``; widths 64/256/256 times ``--width``, rounded; the
width multiplier is an addition here, 1.0 is the source):

* whitening conv 2x2, no padding, 3 -> 24 channels, with bias: its weights
  are frozen to the patch-whitening transform of the first 5000 (normalized)
  training images: the 12 eigenvectors of the *uncentred* covariance of all
  their 2x2x3 patches, in descending eigenvalue order, each divided by
  sqrt(eigenvalue + 5e-4), then the same 12 negated; its bias starts at 0 and
  is trained for the first 3 epochs only (``whiten_bias_epochs``);
* GELU (exact erf form);
* three groups: conv3x3 (pad 1, no bias) -> MaxPool2 -> BatchNorm -> GELU ->
  conv3x3 -> BatchNorm -> GELU;
* MaxPool(3) -> flatten -> Linear(256*W -> 10, no bias) -> times 1/9.

BatchNorm: eps 1e-12, momentum 0.4 in PyTorch's convention (the source writes
0.6 and passes ``1 - 0.6``), weight fixed at 1 (not trained), bias trained.
Conv init: PyTorch's default (kaiming-uniform, a=sqrt(5)), then
``dirac_`` on the first ``in_channels`` output filters (``w[:w.size(1)]``, so
every filter when out < in), conv biases zeroed. Linear: PyTorch's default.

Optimizer: ``torch.optim.SGD`` Nesterov, momentum 0.85, batch 1024, with the
source's decoupled form: ``kilostep_scale = 1024 * (1 + 1 / (1 - 0.85))``,
``lr = 11.5 / kilostep_scale``, ``wd = 0.0153 * batch / kilostep_scale``;
BatchNorm biases get ``lr_b = 64 * lr`` and weight_decay ``wd / lr_b``, the
other trainable tensors (conv and linear weights, whitening bias) ``lr`` and
``wd / lr`` (so every tensor decays by the same ``wd`` per step, coupled
through PyTorch's SGD, i.e. added to the gradient before momentum). Loss:
cross-entropy with label smoothing 0.2, *summed* over the batch. LR schedule
(LambdaLR, stepped after every step): with ``T = ceil(steps_per_epoch *
epochs)`` and ``w = int(0.23 T)``, linear 0.2 -> 1.0 over steps [0, w), then
1.0 -> 0.07 at step T. Lookahead: every 5 steps, for every float tensor of the
state dict (parameters *and* BatchNorm running statistics), ``ema.lerp_(net,
1 - d)`` then ``net.copy_(ema)`` with ``d = 0.95**5 * (step / T)**3``; after the
last step ``net := ema`` (so steps after the last multiple of 5 are
discarded). The lookahead copy is taken before the whitening init, as in the
source. So a run of fewer than 5 steps ends with the *initial* net (untrained,
whitening weights not yet set): smoke runs need at least 5 steps to mean
anything.

Data: the whole training set, /255 and normalized with mean (0.4914, 0.4822,
0.4465), std (0.2470, 0.2435, 0.2616) on the device once; each image flipped
left-right with probability 1/2 once (epoch 0), then reflect-padded by 2;
each epoch a random translation of -2..2 pixels in each axis per image (a
32x32 crop of the padded image), the whole set mirrored on odd epochs
(alternating flip), a random permutation, ``len // batch`` full batches
(drop_last). 9.9 epochs: 48 steps per epoch, T = ceil(48 * 9.9) = 476, the
10th epoch stops after 44 steps.

Evaluation (batches of 2000, ``model.eval()``, running statistics): plain
logits, and TTA level 2: ``0.5 * m(x) + 0.5 * mean(m(x_a), m(x_b))`` where
``m(x) = (f(x) + f(flip(x))) / 2`` and ``x_a``, ``x_b`` are the image shifted
by one pixel (reflect-padded by 1, crops at (0, 0) and (2, 2)): 6 views,
weights 1/4, 1/4, 1/8 x 4. Accuracy is reported with and without TTA.

Differences from the published source
-------------------------------------
* float32 throughout (source: fp16 weights/activations, fp32 BatchNorm,
  channels_last, fp16 input normalisation, whitening statistics in fp32). On
  CUDA, TF32 is off unless ``--tf32``; ``cudnn.benchmark`` is on as in the source.
* Data from ``gpuconv.data.CIFAR10`` (the same images) instead of torchvision.
* One seeded run (``torch.manual_seed(--seed)``; the global generator draws
  init, flips, shifts and permutations in the source's order); the source runs
  25 unseeded runs.
* Timing with ``perf_counter`` (+ ``cuda.synchronize``) instead of CUDA
  events. ``airbench_seconds`` is the source's ``total_time_seconds``
  (whitening init + training + the final TTA evaluation, not the per-epoch
  evaluations); ``train_seconds`` is whitening init + training.
* The per-epoch log gives the mean loss/accuracy over the epoch's batches;
  the source prints only the last batch's (kept in the JSON as ``last_*``).
* Added knobs, source values by default: ``--width``, ``--epochs``,
  ``--batch-size`` (lr stays per step and wd scales with batch exactly as the
  source's formulas do), ``--limit``, ``--test-limit``, ``--no-epoch-eval``.

Library use: ``build_net(width)`` gives the network, ``Airbench`` holds net,
optimizer, schedule and lookahead with ``step(inputs, labels)``, and
``time_train_step(width)`` times a few training steps (``--time-steps``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from math import ceil

import torch
import torch.nn.functional as F
from torch import nn

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)  # the checkout's gpuconv, installed or not

HYP = {
    "train_epochs": 9.9,
    "batch_size": 1024,
    "lr": 11.5,               # per 1024 examples
    "momentum": 0.85,
    "weight_decay": 0.0153,   # per 1024 examples, decoupled from lr
    "bias_scaler": 64.0,      # lr multiplier of BatchNorm biases (not of their wd)
    "label_smoothing": 0.2,
    "whiten_bias_epochs": 3,
    "translate": 2,
    "widths": (64, 256, 256),
    "whiten_kernel": 2,
    "whiten_eps": 5e-4,
    "whiten_images": 5000,
    "batchnorm_momentum": 0.4,  # torch convention (airbench: 0.6, passed as 1 - 0.6)
    "batchnorm_eps": 1e-12,
    "scaling_factor": 1 / 9,
    "warmup_fraction": 0.23,
    "lr_start": 0.2,
    "lr_end": 0.07,
    "lookahead_every": 5,
    "lookahead_base": 0.95 ** 5,
    "tta_level": 2,
    "eval_batch": 2000,
}
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


# ----------------------------------------------------------------- network

class BatchNorm(nn.BatchNorm2d):
    """BatchNorm with its weight fixed at 1 and only the bias trained."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, eps=HYP["batchnorm_eps"],
                         momentum=HYP["batchnorm_momentum"])
        self.weight.requires_grad = False


class Conv(nn.Conv2d):
    """Conv2d with airbench's init: default, then dirac on the first in_channels filters."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, padding="same",
                 bias: bool = False) -> None:
        super().__init__(cin, cout, kernel_size=kernel_size, padding=padding, bias=bias)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.bias is not None:
            self.bias.data.zero_()
        w = self.weight.data
        torch.nn.init.dirac_(w[:w.size(1)])


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = Conv(cin, cout)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(cout)
        self.conv2 = Conv(cout, cout)
        self.norm2 = BatchNorm(cout)
        self.activ = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class Mul(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def group_widths(width: float = 1.0) -> tuple[int, int, int]:
    """The three conv-group widths for a multiplier (64/256/256 at 1.0)."""
    return tuple(max(1, round(w * width)) for w in HYP["widths"])


def build_net(width: float = 1.0, device="cpu") -> nn.Sequential:
    """The airbench94 network (float32) with group widths 64/256/256 times ``width``.

    ``net[0]`` is the whitening conv (weights frozen; call :func:`init_whitening`).
    Parameters are drawn from torch's global generator.
    """
    w1, w2, w3 = group_widths(width)
    k = HYP["whiten_kernel"]
    whiten_width = 2 * 3 * k * k
    net = nn.Sequential(
        Conv(3, whiten_width, k, padding=0, bias=True),
        nn.GELU(),
        ConvGroup(whiten_width, w1),
        ConvGroup(w1, w2),
        ConvGroup(w2, w3),
        nn.MaxPool2d(3),
        nn.Flatten(),
        nn.Linear(w3, 10, bias=False),
        Mul(HYP["scaling_factor"]),
    )
    net[0].weight.requires_grad = False
    return net.to(device)


def init_whitening(layer: nn.Conv2d, images: torch.Tensor, eps: float = HYP["whiten_eps"]):
    """Set ``layer``'s weights to the patch-whitening transform of ``images`` (N,3,H,W)."""
    c, (h, w) = images.shape[1], layer.weight.shape[2:]
    patches = images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w)
    flat = patches.float().reshape(len(patches), -1)
    cov = (flat.T @ flat) / len(flat)  # uncentred, as in the source
    eigenvalues, eigenvectors = torch.linalg.eigh(cov, UPLO="U")
    eigenvalues = eigenvalues.flip(0).view(-1, 1, 1, 1)
    eigenvectors = eigenvectors.T.reshape(c * h * w, c, h, w).flip(0)
    scaled = eigenvectors / torch.sqrt(eigenvalues + eps)
    layer.weight.data[:] = torch.cat((scaled, -scaled))


# ------------------------------------------------------------ optimization

class Lookahead:
    """airbench's lookahead: an EMA of the whole state dict, copied back into the net."""

    def __init__(self, net: nn.Module) -> None:
        self.ema = {k: v.clone() for k, v in net.state_dict().items()}

    def update(self, net: nn.Module, decay: float) -> None:
        for ema, cur in zip(self.ema.values(), net.state_dict().values()):
            if cur.dtype in (torch.half, torch.float):
                ema.lerp_(cur, 1 - decay)
                cur.copy_(ema)


class Airbench:
    """Net, Nesterov SGD, LR schedule and lookahead of one airbench94 run.

    ``total_steps`` is the run length (the schedules depend on it). Call
    :meth:`step` per batch; it returns (summed loss, logits) and applies the
    lookahead, and at ``total_steps`` the final ``net := ema``.
    """

    def __init__(self, net: nn.Module, batch_size: int, total_steps: int) -> None:
        self.net, self.batch_size, self.total_steps = net, batch_size, total_steps
        momentum = HYP["momentum"]
        kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
        self.lr = HYP["lr"] / kilostep_scale
        self.wd = HYP["weight_decay"] * batch_size / kilostep_scale
        self.lr_biases = self.lr * HYP["bias_scaler"]
        norm_ids = {id(m.bias) for m in net.modules() if isinstance(m, BatchNorm)}
        trainable = [p for p in net.parameters() if p.requires_grad]
        norm_biases = [p for p in trainable if id(p) in norm_ids]
        others = [p for p in trainable if id(p) not in norm_ids]
        self.optimizer = torch.optim.SGD(
            [{"params": norm_biases, "lr": self.lr_biases,
              "weight_decay": self.wd / self.lr_biases},
             {"params": others, "lr": self.lr, "weight_decay": self.wd / self.lr}],
            momentum=momentum, nesterov=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.alpha = (HYP["lookahead_base"]
                      * (torch.arange(total_steps + 1) / total_steps) ** 3)
        self.lookahead = Lookahead(net)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=HYP["label_smoothing"],
                                           reduction="none")
        self.steps = 0

    def lr_factor(self, step: int) -> float:
        warmup = int(self.total_steps * HYP["warmup_fraction"])
        if step < warmup:
            frac = step / warmup
            return HYP["lr_start"] * (1 - frac) + 1.0 * frac
        frac = (step - warmup) / (self.total_steps - warmup)
        return 1.0 * (1 - frac) + HYP["lr_end"] * frac

    def step(self, inputs: torch.Tensor, labels: torch.Tensor):
        outputs = self.net(inputs)
        loss = self.loss_fn(outputs, labels).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.steps += 1
        if self.steps % HYP["lookahead_every"] == 0:
            self.lookahead.update(self.net, decay=self.alpha[self.steps].item())
        if self.steps >= self.total_steps:
            self.lookahead.update(self.net, decay=1.0)
        return loss, outputs


# -------------------------------------------------------------------- data

def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    x = images_uint8.float() / 255
    mean = torch.tensor(CIFAR_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def batch_flip_lr(x: torch.Tensor) -> torch.Tensor:
    mask = (torch.rand(len(x), device=x.device) < 0.5).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(-1), x)


def batch_crop(padded: torch.Tensor, size: int) -> torch.Tensor:
    """A random size x size crop of every image (shifts -r..r in each axis)."""
    r = (padded.size(-1) - size) // 2
    shifts = torch.randint(-r, r + 1, size=(len(padded), 2), device=padded.device)
    out = torch.empty((len(padded), padded.size(1), size, size), device=padded.device,
                      dtype=padded.dtype)
    for sy in range(-r, r + 1):
        for sx in range(-r, r + 1):
            mask = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
            out[mask] = padded[mask, :, r + sy:r + sy + size, r + sx:r + sx + size]
    return out


class TrainLoader:
    """airbench's training loader: flip once, translate each epoch, mirror odd epochs."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.epoch = 0
        self.padded = None

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def __iter__(self):
        if self.epoch == 0:
            pad = HYP["translate"]
            self.padded = F.pad(batch_flip_lr(self.images), (pad,) * 4, "reflect")
        images = batch_crop(self.padded, self.images.shape[-1])
        if self.epoch % 2 == 1:
            images = images.flip(-1)
        self.epoch += 1
        order = torch.randperm(len(images), device=images.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield images[idx], self.labels[idx]


# -------------------------------------------------------------- evaluation

def infer(net: nn.Module, images: torch.Tensor, tta_level: int = 0) -> torch.Tensor:
    def basic(x):
        return net(x)

    def mirror(x):
        return 0.5 * net(x) + 0.5 * net(x.flip(-1))

    def mirror_translate(x):
        logits = mirror(x)
        padded = F.pad(x, (1,) * 4, "reflect")
        shifted = [padded[:, :, 0:32, 0:32], padded[:, :, 2:34, 2:34]]
        logits_shifted = torch.stack([mirror(s) for s in shifted]).mean(0)
        return 0.5 * logits + 0.5 * logits_shifted

    fn = [basic, mirror, mirror_translate][tta_level]
    net.eval()
    with torch.no_grad():
        out = torch.cat([fn(x) for x in images.split(HYP["eval_batch"])])
    net.train()
    return out


def evaluate(net, images, labels, tta_level=0) -> float:
    return (infer(net, images, tta_level).argmax(1) == labels).float().mean().item()


def copy_from_gpuconv(model, net: nn.Sequential) -> None:
    """Copy a gpuconv airbench ``model``'s parameters and BatchNorm buffers into ``net``
    (same order; gpuconv's Dense weight is (in, out), torch's Linear weight (out, in))."""
    import numpy as np
    from gpuconv.backend import to_numpy
    ours = [to_numpy(p.data) for p in model.parameters()]
    ours = [a.T if a.ndim == 2 else a for a in ours]
    theirs = list(net.parameters())
    if [tuple(a.shape) for a in ours] != [tuple(t.shape) for t in theirs]:
        raise ValueError("copy_from_gpuconv: parameter shapes differ: "
                         f"{[tuple(a.shape) for a in ours]} vs {[tuple(t.shape) for t in theirs]}")
    ours_buffers = [to_numpy(b) for _, b in model.named_buffers()]
    theirs_buffers = [b for name, b in net.named_buffers() if "num_batches" not in name]
    if len(ours_buffers) != len(theirs_buffers):
        raise ValueError(f"copy_from_gpuconv: {len(ours_buffers)} buffers vs "
                         f"{len(theirs_buffers)}")
    with torch.no_grad():
        for a, t in zip(ours + ours_buffers, theirs + theirs_buffers):
            t.copy_(torch.from_numpy(np.array(a)))


def load_gpuconv_model(path: str, device="cpu") -> nn.Sequential:
    """This network holding the weights of the gpuconv airbench model saved at ``path``."""
    import gpuconv
    model = gpuconv.load_model(path, device="cpu")
    net = build_net(model[2].out_channels / HYP["widths"][0], device)
    copy_from_gpuconv(model, net)
    return net


# ------------------------------------------------------------------ timing

def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _now(device) -> float:
    _sync(device)
    return time.perf_counter()


def time_train_step(width: float = 1.0, batch_size: int = 1024, steps: int = 3,
                    warmup: int = 1, device="cpu", seed: int = 0) -> list[float]:
    """Seconds of each of ``steps`` airbench training steps (after ``warmup``
    untimed ones) on random normal inputs: forward, summed smoothed loss,
    backward, SGD, schedule and lookahead bookkeeping."""
    torch.manual_seed(seed)
    net = build_net(width, device)
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    init_whitening(net[0], x[:256])
    run = Airbench(net, batch_size, total_steps=10 ** 6)
    times = []
    for i in range(warmup + steps):
        t0 = _now(device)
        run.step(x, y)
        t1 = _now(device)
        if i >= warmup:
            times.append(t1 - t0)
    return times


# -------------------------------------------------------------------- main

def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="airbench94 (PyTorch, float32) on CIFAR-10",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("GPUCONV_DATA"),
                   help="CIFAR-10 root (cifar-10-batches-py/ or -bin/)")
    p.add_argument("--width", type=float, default=1.0, help="multiplier of 64/256/256")
    p.add_argument("--epochs", type=float, default=HYP["train_epochs"])
    p.add_argument("--batch-size", type=int, default=HYP["batch_size"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--limit", type=int, default=None, help="first N training images")
    p.add_argument("--test-limit", type=int, default=None, help="first N test images")
    p.add_argument("--no-epoch-eval", action="store_true",
                   help="skip the plain test accuracy after each epoch")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--tf32", action="store_true", help="allow TF32 on CUDA")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--time-steps", type=int, default=0, metavar="N",
                   help="only time N training steps on random data, then exit")
    p.add_argument("--evaluate-gpuconv", default=None, metavar="MODEL.npz",
                   help="only evaluate a gpuconv airbench model (plain and TTA) in this "
                        "network on the test set, then exit")
    return p.parse_args(argv)


def main(argv=None) -> int:
    t_start = time.perf_counter()
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "cuda":
        if not torch.cuda.is_available():
            print("error: --device cuda but no CUDA device", file=sys.stderr)
            return 2
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32

    if args.time_steps:
        times = time_train_step(args.width, args.batch_size, args.time_steps,
                                device=device, seed=args.seed)
        ms = ", ".join(f"{1e3 * t:.0f}" for t in times)
        print(f"width {args.width:g} batch {args.batch_size} {device} "
              f"threads {torch.get_num_threads()}: step ms {ms}")
        print(f"median {1e3 * sorted(times)[len(times) // 2]:.1f} ms")
        if args.json:
            _write_json(args.json, {"width": args.width, "batch_size": args.batch_size,
                                    "step_seconds": times, **_env(args)})
        return 0

    from gpuconv.data import CIFAR10  # only this mode needs data
    if args.evaluate_gpuconv:
        test = CIFAR10(args.data_dir, train=False)
        n_test = len(test.images) if args.test_limit is None else args.test_limit
        test_x = normalize(torch.from_numpy(test.images[:n_test]).to(device))
        test_y = torch.from_numpy(test.labels[:n_test]).to(device)
        net = load_gpuconv_model(args.evaluate_gpuconv, device)
        acc, acc_tta = (evaluate(net, test_x, test_y, level) for level in (0, HYP["tta_level"]))
        print(f"{args.evaluate_gpuconv} in torch: test accuracy {acc:.4f}  tta {acc_tta:.4f}"
              f"  ({n_test} images)")
        return 0
    train, test = CIFAR10(args.data_dir, train=True), CIFAR10(args.data_dir, train=False)
    n_train = len(train.images) if args.limit is None else min(args.limit, len(train.images))
    n_test = len(test.images) if args.test_limit is None else min(args.test_limit,
                                                                  len(test.images))
    torch.manual_seed(args.seed)
    train_x = normalize(torch.from_numpy(train.images[:n_train]).to(device))
    train_y = torch.from_numpy(train.labels[:n_train]).to(device)
    test_x = normalize(torch.from_numpy(test.images[:n_test]).to(device))
    test_y = torch.from_numpy(test.labels[:n_test]).to(device)
    loader = TrainLoader(train_x, train_y, args.batch_size)
    if len(loader) == 0:
        print(f"error: {n_train} training images make no full batch of "
              f"{args.batch_size}; lower --batch-size", file=sys.stderr)
        return 2
    total_steps = ceil(len(loader) * args.epochs)
    widths = group_widths(args.width)
    print(f"airbench94 torch {torch.__version__} {device} threads "
          f"{torch.get_num_threads()} width {args.width:g} {widths}")
    print(f"train {n_train} test {n_test} batch {args.batch_size} epochs "
          f"{args.epochs:g} steps {total_steps} seed {args.seed}")

    if total_steps < HYP["lookahead_every"]:
        print(f"note: {total_steps} steps < {HYP['lookahead_every']}: no lookahead "
              "update, so the final\nnet := ema is the initial net (as in airbench)")
    net = build_net(args.width, device)
    run = Airbench(net, args.batch_size, total_steps)  # lookahead copy before whitening
    t0 = _now(device)
    init_whitening(net[0], train_x[:HYP["whiten_images"]])
    train_seconds = _now(device) - t0

    history = []
    for epoch in range(ceil(args.epochs)):
        net[0].bias.requires_grad = epoch < HYP["whiten_bias_epochs"]
        t0 = _now(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = steps = 0
        net.train()
        for inputs, labels in loader:
            loss, outputs = run.step(inputs, labels)
            loss_sum += loss.detach()
            correct += (outputs.detach().argmax(1) == labels).sum()
            seen += len(labels)
            steps += 1
            if run.steps >= total_steps:
                break
        seconds = _now(device) - t0
        train_seconds += seconds
        row = {"epoch": epoch + 1, "steps": steps, "seconds": seconds,
               "train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
               "last_loss": loss.item() / len(labels),
               "last_acc": (outputs.detach().argmax(1) == labels).float().mean().item()}
        if not args.no_epoch_eval:
            row["val_acc"] = evaluate(net, test_x, test_y)
        history.append(row)
        val = f" val {row['val_acc']:.4f}" if "val_acc" in row else ""
        print(f"epoch {epoch + 1:2d}/{ceil(args.epochs)} steps {steps:3d} loss "
              f"{row['train_loss']:.4f} acc {row['train_acc']:.4f}{val} {seconds:7.1f}s")

    acc = evaluate(net, test_x, test_y) if args.no_epoch_eval else history[-1]["val_acc"]
    t0 = _now(device)
    acc_tta = evaluate(net, test_x, test_y, tta_level=HYP["tta_level"])
    tta_seconds = _now(device) - t0
    total_seconds = time.perf_counter() - t_start
    print(f"test accuracy {acc:.4f}  tta {acc_tta:.4f}  ({n_test} images)")
    print(f"train {train_seconds:.1f}s  tta eval {tta_seconds:.1f}s  "
          f"whole run {total_seconds:.1f}s")
    if args.json:
        _write_json(args.json, {
            "accuracy": acc, "accuracy_tta": acc_tta,
            "train_seconds": train_seconds, "tta_eval_seconds": tta_seconds,
            "airbench_seconds": train_seconds + tta_seconds,
            "total_seconds": total_seconds,
            "epochs": args.epochs, "steps": total_steps, "history": history,
            "width": args.width, "widths": list(widths), "batch_size": args.batch_size,
            "seed": args.seed, "n_train": n_train, "n_test": n_test,
            "hyperparameters": {k: list(v) if isinstance(v, tuple) else v
                                for k, v in HYP.items()},
            **_env(args)})
    return 0


def _env(args) -> dict:
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "device": args.device, "cpu": cpu_name(), "python": platform.python_version(),
           "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "command": " ".join([sys.executable] + sys.argv)}
    if args.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["tf32"] = args.tf32
    return env


def _write_json(path: str, data: dict) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
