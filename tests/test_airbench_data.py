"""airbench-style data pieces: reflect padding, translate+flip gathers, the
device-resident loader with alternating flips, and test-time augmentation."""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv.backend import device_of, epoch_order, to_device, to_numpy
from gpuconv.data import DataLoader, DeviceDataLoader, RandomTranslate
from gpuconv.data.augment import crop_and_flip, pad_images
from gpuconv.data.device_loader import flip_mask, translate_offsets
from gpuconv.layers import Conv2D, Dense, Flatten, GlobalAvgPool2D
from gpuconv.training.tta import tta_forward, tta_views
from conftest import device_fixture_with_second_gpu, on_device  # noqa: F401

device = device_fixture_with_second_gpu()

torch = pytest.importorskip("torch")
F = torch.nn.functional


def images(n=6, c=3, h=8, w=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)


@pytest.mark.parametrize("mode, torch_mode", [("reflect", "reflect"), ("edge", "replicate"),
                                              ("constant", "constant")])
def test_pad_images_matches_torch(device, mode, torch_mode):
    x = images()
    out = to_numpy(pad_images(to_device(x, device), 2, mode))
    ref = F.pad(torch.from_numpy(x), (2, 2, 2, 2), mode=torch_mode).numpy()
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(ValueError, match="mode"):
        pad_images(to_device(x, device), 1, "wrap")
    with pytest.raises(ValueError, match="does not fit"):
        pad_images(to_device(x, device), 8, "reflect")


def test_crop_and_flip_is_one_gather_of_crops_and_mirrors(device):
    x = images(n=5, h=10, w=12)
    rows = np.array([4, 0, 0, 2], dtype=np.int64)
    top = np.array([0, 2, 1, 2], dtype=np.int64)
    left = np.array([3, 0, 1, 4], dtype=np.int64)
    flip = np.array([True, False, True, False])
    out = crop_and_flip(to_device(x, device), to_device(rows, device), to_device(top, device),
                        to_device(left, device), to_device(flip, device), (8, 8))
    for i, (r, t, l, f) in enumerate(zip(rows, top, left, flip)):
        crop = x[r, :, t:t + 8, l:l + 8]
        np.testing.assert_array_equal(to_numpy(out)[i], crop[..., ::-1] if f else crop)


def test_random_translate_shifts_each_image_within_range(device):
    x = images(n=16, h=6, w=6)
    gpuconv.seed(3)
    out = to_numpy(RandomTranslate(2)(to_device(x, device)))
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    shifts = set()
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if np.array_equal(out[i], padded[i, :, dy:dy + 6, dx:dx + 6])]
        assert found, f"image {i} is not a reflect-padded translation"
        shifts.add(found[0])
    assert len(shifts) > 3
    gpuconv.seed(3)
    np.testing.assert_array_equal(out, to_numpy(RandomTranslate(2)(to_device(x, device))))
    assert RandomTranslate(0)(to_device(x, device)).shape == x.shape
    with pytest.raises(ValueError, match="max_shift"):
        RandomTranslate(-1)


def test_flip_masks_alternate_and_translations_are_seeded():
    first, second, third = (flip_mask(1000, 7, e, "alternating") for e in range(3))
    assert 400 < first.sum() < 600
    np.testing.assert_array_equal(second, ~first)
    np.testing.assert_array_equal(third, first)
    assert not flip_mask(10, 7, 1, None).any()
    assert not np.array_equal(flip_mask(1000, 7, 0, "random"), flip_mask(1000, 7, 1, "random"))
    top, left = translate_offsets(1000, 7, 0, 2)
    assert top.min() == 0 and top.max() == 4 and left.min() == 0 and left.max() == 4
    np.testing.assert_array_equal(top, translate_offsets(1000, 7, 0, 2)[0])
    assert not np.array_equal(top, translate_offsets(1000, 7, 1, 2)[0])


def uint8_set(n=20, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8),
            rng.integers(0, 10, n).astype(np.int64))


MEAN_STD = ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


def test_device_loader_without_augmentation_equals_dataloader(device):
    data = uint8_set()
    ours = DeviceDataLoader(data, 6, shuffle=True, seed=5, device=device, normalize=MEAN_STD)
    ref = DataLoader(data, 6, shuffle=True, seed=5, device=device, normalize=MEAN_STD,
                     prefetch=False)
    assert len(ours) == len(ref) == 4
    for epoch in range(2):
        for (x, y), (rx, ry) in zip(ours, ref):
            np.testing.assert_allclose(to_numpy(x), to_numpy(rx), rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(to_numpy(y), to_numpy(ry))
    assert ours.epoch == 2 and ours.state_dict() == {"epoch": 2, "seed": 5}


def test_device_loader_translates_and_alternates_flips(device):
    images_u8, labels = uint8_set()
    loader = DeviceDataLoader((images_u8, labels), 8, shuffle=True, drop_last=True, seed=2,
                              device=device, translate=2, flip="alternating")
    base = images_u8.astype(np.float32) / 255
    padded = np.pad(base, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    assert len(loader) == 2
    for epoch in range(3):
        order = epoch_order(20, 2, epoch, True)
        top, left = translate_offsets(20, 2, epoch, 2)
        flips = flip_mask(20, 2, epoch, "alternating")
        for b, (x, y) in enumerate(loader):
            idx = order[b * 8:(b + 1) * 8]
            np.testing.assert_array_equal(to_numpy(y), labels[idx])
            for i, k in enumerate(idx):
                crop = padded[k, :, top[k]:top[k] + 8, left[k]:left[k] + 8]
                np.testing.assert_allclose(to_numpy(x)[i], crop[..., ::-1] if flips[k] else crop,
                                           rtol=1e-6)
    loader.set_epoch(1)
    again = [to_numpy(x) for x, _ in loader]
    loader.set_epoch(1)
    np.testing.assert_array_equal(np.concatenate(again), np.concatenate(
        [to_numpy(x) for x, _ in loader]))


def test_device_loader_validates():
    data = uint8_set()
    with pytest.raises(ValueError, match="flip"):
        DeviceDataLoader(data, 4, flip="sometimes")
    with pytest.raises(ValueError, match="translate"):
        DeviceDataLoader(data, 4, translate=-2)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceDataLoader(data, 0)
    with pytest.raises(TypeError, match="images"):
        DeviceDataLoader(object(), 4)


def small_model(device):
    gpuconv.seed(0)
    return gpuconv.Sequential([Conv2D(3, 4, 3, padding="same"), GlobalAvgPool2D(), Flatten(),
                               Dense(4, 5)]).to(device)


def test_tta_views_and_weights_match_airbench(device):
    x = images(n=3)
    views = tta_views(to_device(x, device), 2)
    assert len(views) == 6 and abs(sum(w for w, _ in views) - 1) < 1e-12
    padded = F.pad(torch.from_numpy(x), (1,) * 4, "reflect")
    expected = [x, x[..., ::-1], padded[:, :, 0:8, 0:8].numpy(),
                padded[:, :, 0:8, 0:8].numpy()[..., ::-1], padded[:, :, 2:10, 2:10].numpy(),
                padded[:, :, 2:10, 2:10].numpy()[..., ::-1]]
    for (_, view), ref in zip(views, expected):
        np.testing.assert_array_equal(to_numpy(view), ref)
    assert [w for w, _ in tta_views(to_device(x, device), 1)] == [0.5, 0.5]
    with pytest.raises(ValueError, match="tta level"):
        tta_views(to_device(x, device), 3)


def test_predict_with_tta_is_the_weighted_mean_of_view_logits(device):
    model = small_model(device)
    x = to_device(images(n=7), device)
    plain = [to_numpy(model.predict(v)) for _, v in tta_views(x, 2)]
    # airbench: 0.5 * mirror_mean(x) + 0.5 * mean(mirror_mean(shift_a), mirror_mean(shift_b))
    expected = 0.5 * (0.5 * plain[0] + 0.5 * plain[1]) + 0.5 * (
        0.5 * (0.5 * plain[2] + 0.5 * plain[3]) + 0.5 * (0.5 * plain[4] + 0.5 * plain[5]))
    got = to_numpy(model.predict(x, batch_size=3, tta=True))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(model.predict(x, tta=1)),
                               0.5 * plain[0] + 0.5 * plain[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(to_numpy(model.predict(x, tta=False)), plain[0])


def test_evaluate_with_tta_scores_the_averaged_logits(device):
    model = small_model(device)
    x, y = images(n=12), np.arange(12) % 5
    logits = to_numpy(model.predict(to_device(x, device), tta=True))
    batches = [(to_device(x[i:i + 5], device), to_device(y[i:i + 5], device))
               for i in range(0, 12, 5)]
    result = model.evaluate(batches, tta=True)
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y))
    assert result["samples"] == 12
    assert tta_forward(lambda v: v.sum(axis=(1, 2, 3)), to_device(x, device), 0).shape == (12,)


# ---- weight averaging --------------------------------------------------------------
def bn_model(device):
    from gpuconv.layers import BatchNorm2d
    gpuconv.seed(0)
    return gpuconv.Sequential([Conv2D(3, 4, 3, padding="same"), BatchNorm2d(4),
                               GlobalAvgPool2D(), Flatten(), Dense(4, 5)]).to(device)


def float_state(model):
    state = {f"param/{n}": to_numpy(p.data).copy() for n, p in model.named_parameters()}
    state.update({f"buffer/{n}": to_numpy(b).copy() for n, b in model.named_buffers()
                  if b.dtype.kind == "f"})
    return state


def perturb(model, rng):
    for _, p in model.named_parameters():
        with device_of(p.data).context():
            p.data += to_device(rng.standard_normal(p.data.shape).astype(p.data.dtype),
                                device_of(p.data))
    for _, b in model.named_buffers():
        if b.dtype.kind == "f":
            with device_of(b).context():
                b += to_device(rng.random(b.shape).astype(b.dtype), device_of(b))


def test_lookahead_follows_airbench_lerp_schedule(device):
    from gpuconv.training.averaging import Lookahead
    model, total = bn_model(device), 23
    callback = Lookahead(total_steps=total)
    callback.set_model(model)
    callback.on_train_begin()
    reference = {k: torch.from_numpy(v) for k, v in float_state(model).items()}
    alpha = 0.95 ** 5 * (torch.arange(total + 1, dtype=torch.float64) / total) ** 3
    rng = np.random.default_rng(0)
    for step in range(1, total + 1):
        perturb(model, rng)
        current = {k: torch.from_numpy(v) for k, v in float_state(model).items()}
        callback.on_batch_end(step)
        if step % 5 == 0:  # airbench: ema.lerp_(net, 1 - decay); net.copy_(ema)
            for key, ema in reference.items():
                ema.lerp_(current[key], float(1 - alpha[step]))
                current[key] = ema.clone()
        for key, value in float_state(model).items():
            np.testing.assert_allclose(value, current[key].numpy(), rtol=1e-5, atol=1e-6)
    callback.on_train_end()  # airbench's final update(decay=1.0): net = ema
    for key, value in float_state(model).items():
        np.testing.assert_allclose(value, reference[key].numpy(), rtol=1e-5, atol=1e-6)


def test_ema_average_is_the_exponential_mean_and_round_trips(device):
    from gpuconv.training.averaging import EMA
    model = bn_model(device)
    callback = EMA(decay=0.8, every=2)
    callback.set_model(model)
    callback.on_train_begin()
    expected = float_state(model)
    rng = np.random.default_rng(1)
    for step in range(1, 8):
        perturb(model, rng)
        callback.on_batch_end(step)
        if step % 2 == 0:
            expected = {k: 0.8 * v + 0.2 * float_state(model)[k] for k, v in expected.items()}
    trained = float_state(model)
    for key, value in callback.averages():
        np.testing.assert_allclose(to_numpy(value), expected[key], rtol=1e-5, atol=1e-6)
    state = callback.state_dict()
    assert state["step"] == 7
    resumed = EMA(decay=0.8, every=2)
    resumed.set_model(model)
    resumed.load_state_dict(state)
    resumed.on_train_begin()
    for key, value in resumed.averages():
        np.testing.assert_allclose(to_numpy(value), expected[key], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(float_state(model)["param/0.weight"], trained["param/0.weight"])
    callback.on_train_end()  # without write_back the average replaces the weights at the end
    np.testing.assert_allclose(float_state(model)["param/0.weight"],
                               expected["param/0.weight"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="decay"):
        EMA(decay=1.5)
    with pytest.raises(ValueError, match="every"):
        EMA(every=0)
