"""fit(max_steps=S): training ends after S batches in total, mid-epoch if need be,
and a resumed run counts the batches it already trained."""
from __future__ import annotations

import numpy
import pytest

import gpuconv
from gpuconv.backend import to_numpy
from gpuconv.layers import Dense
from gpuconv.losses import SoftmaxCrossEntropy
from gpuconv.optim import SGD
from gpuconv.training.callbacks import Callback
from gpuconv.training.loop import ArrayBatches


class CountBatches(Callback):
    def __init__(self):
        self.per_epoch: dict[int, int] = {}
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.per_epoch[epoch] = 0

    def on_batch_end(self, step, logs=None):
        self.per_epoch[self.epoch] += 1


def setup():
    gpuconv.seed(0)
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((40, 5)).astype(numpy.float64)
    y = rng.integers(0, 3, 40)
    model = gpuconv.Sequential([Dense(5, 3, dtype="float64")])
    return model, ArrayBatches(x, y, batch_size=8, shuffle=True, seed=1)


def test_max_steps_stops_in_the_middle_of_an_epoch():
    model, data = setup()
    counter = CountBatches()
    history = model.fit(data, epochs=5, optimizer=SGD(model, lr=0.1), loss=SoftmaxCrossEntropy(),
                        callbacks=[counter], verbose=0, max_steps=12)
    assert counter.per_epoch == {1: 5, 2: 5, 3: 2}
    assert len(history) == 3 and history.records[-1]["epoch"] == 3


def test_max_steps_counts_resumed_batches(tmp_path):
    model, data = setup()
    ckpt = tmp_path / "ckpt.npz"
    model.fit(data, epochs=1, optimizer=SGD(model, lr=0.1), loss=SoftmaxCrossEntropy(),
              verbose=0, checkpoint_path=ckpt, max_steps=12)
    full, full_data = setup()
    full.fit(full_data, epochs=5, optimizer=SGD(full, lr=0.1), loss=SoftmaxCrossEntropy(),
             verbose=0, max_steps=12)
    resumed, resumed_data = setup()
    counter = CountBatches()
    resumed.fit(resumed_data, epochs=5, optimizer=SGD(resumed, lr=0.1),
                loss=SoftmaxCrossEntropy(), callbacks=[counter], verbose=0, resume_from=ckpt,
                max_steps=12)
    assert counter.per_epoch == {2: 5, 3: 2}
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        numpy.testing.assert_array_equal(to_numpy(a.data), to_numpy(b.data), err_msg=name)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_max_steps_is_validated(bad):
    model, data = setup()
    with pytest.raises(ValueError, match="max_steps"):
        model.fit(data, epochs=1, optimizer=SGD(model, lr=0.1), loss=SoftmaxCrossEntropy(),
                  verbose=0, max_steps=bad)
