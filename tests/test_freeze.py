"""Frozen parameters (Parameter.requires_grad, Layer.freeze/unfreeze/trainable_parameters/
frozen_names) and the config round trip of the new layers (GELU, Multiply).

The save/load side of frozen state belongs to the model serializer; the test
``test_frozen_state_survives_the_documented_save_and_rebuild_recipe`` spells out
the recipe it must follow (config + frozen_names, then freeze(*names)).
"""
from __future__ import annotations

import json

import numpy
import pytest

import gpuconv
from gpuconv import layers
from gpuconv.containers import Sequential
from gpuconv.layers import (GELU, LAYER_TYPES, BatchNorm2d, Conv2D, Dense, Multiply, Parameter,
                            ReLU, Residual)


def test_parameters_are_trainable_by_default():
    p = Parameter(numpy.zeros(3))
    assert p.requires_grad is True
    assert Parameter(numpy.zeros(3), "w", requires_grad=False).requires_grad is False
    assert "requires_grad=False" in repr(Parameter(numpy.zeros(2), "w", requires_grad=False))
    layer = Conv2D(2, 3, 3)
    assert layer.trainable_parameters() == layer.parameters() and layer.frozen_names() == []


def test_freeze_and_unfreeze_by_name_return_self_and_zero_the_gradient():
    layer = Dense(3, 2)
    layer.weight.grad[...] = 1.0
    layer.bias.grad[...] = 1.0
    assert layer.freeze("weight") is layer
    assert layer.frozen_names() == ["weight"]
    assert not layer.weight.grad.any() and layer.bias.grad.all()  # only the frozen one zeroed
    assert layer.trainable_parameters() == [layer.bias]
    assert layer.freeze() is layer and layer.frozen_names() == ["weight", "bias"]
    assert layer.trainable_parameters() == []
    assert layer.unfreeze("bias") is layer and layer.frozen_names() == ["weight"]
    assert layer.unfreeze() is layer and layer.frozen_names() == []
    assert GELU().freeze().frozen_names() == []  # no parameters: nothing to do


def test_unknown_or_non_string_names_raise():
    layer = BatchNorm2d(2)
    with pytest.raises(KeyError, match="gamma.*known: \\['weight', 'bias'\\]"):
        layer.freeze("gamma")
    with pytest.raises(TypeError, match="strings"):
        layer.freeze(["weight"])
    assert layer.frozen_names() == []  # nothing changed by the failed calls


def test_containers_use_dotted_names_and_freeze_all_children():
    model = Sequential([Conv2D(2, 3, 3), BatchNorm2d(3), ReLU(),
                        Residual([Conv2D(3, 3, 1), BatchNorm2d(3)])])
    model.freeze("1.weight", "3.body.1.weight")
    assert model.frozen_names() == ["1.weight", "3.body.1.weight"]
    assert model[1].frozen_names() == ["weight"]
    assert model[3].frozen_names() == ["body.1.weight"]
    assert len(model.trainable_parameters()) == len(model.parameters()) - 2
    model[3].freeze()
    assert model.frozen_names() == ["1.weight", "3.body.0.weight", "3.body.0.bias",
                                    "3.body.1.weight", "3.body.1.bias"]
    model.unfreeze()
    assert model.frozen_names() == []


def test_frozen_state_survives_moves_casts_and_state_dict_loading(device):
    layer = Conv2D(2, 3, 3).freeze("bias")
    layer.to(device).astype("float64")
    assert layer.frozen_names() == ["bias"]
    layer.load_state_dict(Conv2D(2, 3, 3).state_dict())
    assert layer.frozen_names() == ["bias"]
    layer.to("cpu")
    assert layer.frozen_names() == ["bias"] and isinstance(layer.bias.grad, numpy.ndarray)


def test_config_does_not_carry_frozen_state():
    """Frozen state lives in frozen_names(), next to config(), not inside it."""
    layer = BatchNorm2d(4, eps=1e-12, momentum=0.4)
    before = layer.config()
    layer.freeze("weight")
    assert layer.config() == before == {"num_features": 4, "eps": 1e-12, "momentum": 0.4}


@pytest.mark.parametrize("layer", [GELU(), GELU("tanh"), Multiply(1 / 9), Multiply(-2)],
                         ids=["gelu", "gelu-tanh", "multiply", "multiply-int"])
def test_new_layers_are_registered_and_round_trip_their_config(layer):
    assert LAYER_TYPES[type(layer).__name__] is type(layer)
    config = json.loads(json.dumps(layer.config()))
    rebuilt = LAYER_TYPES[type(layer).__name__](**config)
    assert rebuilt.config() == layer.config()
    x = numpy.linspace(-4, 4, 24).reshape(2, 3, 4)
    numpy.testing.assert_array_equal(rebuilt.forward(x), layer.forward(x))


def test_new_layers_validate_their_arguments():
    with pytest.raises(ValueError, match="approximate"):
        GELU("fast")
    for bad in (float("inf"), float("nan"), "0.5", None, True):
        with pytest.raises(ValueError, match="Multiply"):
            Multiply(bad)
    assert Multiply(numpy.float32(0.25)).scale == 0.25
    with pytest.raises(TypeError, match="floating"):
        Multiply(2.0).forward(numpy.arange(3))
    with pytest.raises(ValueError, match=r"expected dy of shape \(2, 3\)"):
        m = Multiply(2.0)
        m.forward(numpy.zeros((2, 3)))
        m.backward(numpy.zeros((3, 2)))
    with pytest.raises(RuntimeError, match="before forward"):
        GELU().backward(numpy.zeros(3))
    with gpuconv.no_grad():
        g = GELU()
        g.forward(numpy.zeros(3))
    with pytest.raises(RuntimeError, match="no_grad"):
        g.backward(numpy.zeros(3))


def test_dtypes_are_kept():
    for dtype in ("float16", "float32", "float64"):
        x = numpy.linspace(-3, 3, 12, dtype=dtype).reshape(3, 4)
        for layer in (GELU(), GELU("tanh"), Multiply(1 / 9)):
            y = layer.forward(x)
            assert y.dtype == dtype and layer.backward(numpy.ones_like(x)).dtype == dtype


def test_models_with_the_new_layers_save_and_load(tmp_path):
    """Through the real serializer (public save/load): GELU and Multiply are registered."""
    gpuconv.seed(1)
    model = gpuconv.Sequential([Conv2D(3, 4, 3, padding="same"), GELU(), Conv2D(4, 2, 1),
                                GELU("tanh"), Multiply(1 / 9)])
    model.save(tmp_path / "m.npz")
    loaded = gpuconv.load_model(tmp_path / "m.npz")
    assert loaded.config() == model.config()
    x = numpy.random.default_rng(2).standard_normal((2, 3, 5, 5)).astype(numpy.float32)
    numpy.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def _save(model) -> tuple[list, dict]:
    """The recipe for the serializer: per leaf layer, its config and its frozen names."""
    specs = [{"type": type(layer).__name__, "config": layer.config(),
              **({"frozen": layer.frozen_names()} if layer.frozen_names() else {})}
             for layer in model]
    return json.loads(json.dumps(specs)), model.state_dict()


def _load(specs, state) -> Sequential:
    layers = []
    for spec in specs:
        layer = LAYER_TYPES[spec["type"]](**spec["config"])
        layers.append(layer.freeze(*spec["frozen"]) if spec.get("frozen") else layer)
    model = Sequential(layers)
    model.load_state_dict(state)
    return model


def test_frozen_state_survives_the_documented_save_and_rebuild_recipe():
    gpuconv.seed(3)
    model = Sequential([Conv2D(3, 12, 2).freeze("weight"), GELU(),
                        BatchNorm2d(12, eps=1e-12, momentum=0.4).freeze("weight"),
                        Dense(12, 10, bias=False).freeze(), Multiply(1 / 9)])
    specs, state = _save(model)
    assert "frozen" not in specs[1] and specs[0]["frozen"] == ["weight"]
    loaded = _load(specs, state)
    assert loaded.frozen_names() == model.frozen_names() == ["0.weight", "2.weight", "3.weight"]
    assert [p.requires_grad for p in loaded.parameters()] == \
        [p.requires_grad for p in model.parameters()]


def test_model_files_and_checkpoints_keep_frozen_parameters(tmp_path):
    from gpuconv.io.checkpoint import load_checkpoint, restore_model, save_checkpoint
    from gpuconv.layers import BatchNorm2d, Conv2D, Dense, Flatten, GlobalAvgPool2D
    import gpuconv

    def build():
        gpuconv.seed(0)
        return gpuconv.Sequential([Conv2D(3, 4, 2, padding=0), BatchNorm2d(4).freeze("weight"),
                                   GlobalAvgPool2D(), Flatten(), Dense(4, 2, bias=False)])

    model = build()
    model[0].freeze("weight")
    model.save(tmp_path / "m.npz")
    loaded = gpuconv.load_model(tmp_path / "m.npz")
    assert loaded.frozen_names() == ["0.weight", "1.weight"]
    model[0].freeze("bias")  # training state: a checkpoint restores it onto a fresh model
    save_checkpoint(tmp_path / "c.npz", model)
    fresh = build()
    restore_model(load_checkpoint(tmp_path / "c.npz"), fresh)
    assert fresh.frozen_names() == ["0.weight", "0.bias", "1.weight"]
    plain = gpuconv.Sequential([Dense(2, 2)])
    plain.save(tmp_path / "p.npz")
    import numpy, json
    with numpy.load(tmp_path / "p.npz") as archive:
        spec = json.loads(bytes(archive["architecture"]).decode())
    assert "frozen" not in spec["layers"][0]  # files without frozen parameters are unchanged


def test_backward_params_skips_the_frozen_bottom_of_a_sequential():
    """With no input gradient wanted, nothing below the first trainable layer runs (its
    gradients would be unused) and that layer skips its input gradient; the trainable
    gradients equal a full backward's."""
    rng = numpy.random.default_rng(40)
    x = rng.standard_normal((2, 3, 6, 6))

    def build():
        gpuconv.seed(8)
        return Sequential([Conv2D(3, 4, 2).freeze("weight", "bias"), GELU(),
                           Conv2D(4, 5, 3, padding="same"), ReLU(), layers.Flatten(),
                           Dense(5 * 5 * 5, 3)]).astype("float64")

    model, reference = build(), build()
    calls = []
    for i, layer in enumerate(model.layers[:3]):
        for name in ("backward", "backward_params"):
            original = getattr(layer, name)
            setattr(layer, name, lambda dy, i=i, name=name, original=original:
                    (calls.append((i, name)), original(dy))[1])
    dy = rng.standard_normal((2, 3))
    model.forward(x)
    model.backward_params(dy)
    assert calls == [(2, "backward_params")]
    reference.forward(x)
    reference.backward(dy)
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        numpy.testing.assert_allclose(p.grad, q.grad, rtol=1e-12, atol=1e-14, err_msg=name)
    model.layers[2].freeze("weight", "bias")
    model.layers[5].freeze("weight", "bias")
    calls.clear()
    model.forward(x)
    model.backward_params(dy)  # nothing trainable: nothing runs
    assert calls == []
