"""Train a small CNN on CIFAR-10 with the gpuconv Python API.

    python examples/train_cifar10.py            # data in $GPUCONV_DATA or ~/.cache/gpuconv
    GPUCONV_EXAMPLE_LIMIT=2000 GPUCONV_EXAMPLE_EPOCHS=1 python examples/train_cifar10.py

The trained model goes to ``runs/example-cifar10/cifar10_cnn.npz`` under the current
folder (``$GPUCONV_EXAMPLE_OUT`` picks another folder).

(The ``gpuconv train`` command does the same with more options and a run folder.)
"""
import os

import gpuconv
from gpuconv.data import CIFAR10_MEAN, CIFAR10_STD, Compose, DataLoader, RandomCrop, \
    RandomHorizontalFlip
from gpuconv.layers import BatchNorm2d, Conv2D, Dense, Flatten, MaxPool2D, ReLU

limit = int(os.environ.get("GPUCONV_EXAMPLE_LIMIT", "50000"))
epochs = int(os.environ.get("GPUCONV_EXAMPLE_EPOCHS", "10"))
out = os.environ.get("GPUCONV_EXAMPLE_OUT", os.path.join("runs", "example-cifar10"))
gpuconv.seed(0)
device = gpuconv.get_device()                      # CUDA if available, else the CPU
train = gpuconv.datasets.CIFAR10(train=True)       # download=True fetches it (170 MB)
test = gpuconv.datasets.CIFAR10(train=False)
train = gpuconv.datasets.ArrayDataset(train.images[:limit], train.labels[:limit], train.classes)

norm = (CIFAR10_MEAN, CIFAR10_STD)
augment = Compose([RandomCrop(32, padding=4), RandomHorizontalFlip()])
train_loader = DataLoader(train, 128, shuffle=True, device=device, normalize=norm,
                          augment=augment)
test_loader = DataLoader(test, 256, device=device, normalize=norm)

model = gpuconv.Sequential([
    Conv2D(3, 32, 3, padding="same"), BatchNorm2d(32), ReLU(), MaxPool2D(2),
    Conv2D(32, 64, 3, padding="same"), BatchNorm2d(64), ReLU(), MaxPool2D(2),
    Flatten(), Dense(64 * 8 * 8, 10),
]).to(device)
model.summary((3, 32, 32))
optimizer = gpuconv.optim.Adam(model, lr=1e-3, weight_decay=1e-4)
scheduler = gpuconv.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
model.fit(train_loader, epochs, optimizer, gpuconv.losses.SoftmaxCrossEntropy(),
          val_data=test_loader, scheduler=scheduler, verbose=2)
print("test:", model.evaluate(test_loader))
os.makedirs(out, exist_ok=True)
model.save(os.path.join(out, "cifar10_cnn.npz"))   # gpuconv.load_model(...) reads it back
print("model saved to", os.path.join(out, "cifar10_cnn.npz"))
