"""Tests of the U-Net of Ho et al. (2020): configuration, shapes, input checks, ONNX export."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from refdiff.nn import PRESETS, UNet, UNetConfig, count_parameters, preset  # noqa: E402
from refdiff.nn.unet import timestep_embedding  # noqa: E402

HO_ET_AL_CIFAR10_PARAMETERS = 35_746_307  # diffusion_tf's CIFAR-10 model, "35.7M" in the paper


def _tiny(**overrides) -> UNet:
    torch.manual_seed(0)
    return UNet(preset("tiny", **overrides))


def _perturbed(model: UNet, seed: int = 0, scale: float = 0.05) -> UNet:
    """Add noise to every parameter, so the zero-initialised layers no longer hide anything."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _inputs(batch: int, cfg: UNetConfig, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    return x, t


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


def test_cifar10_preset_is_the_papers_model():
    cfg = preset("cifar10")
    assert cfg == UNetConfig()  # the defaults are the paper's CIFAR-10 settings
    assert (cfg.base_channels, cfg.channel_mult, cfg.num_res_blocks) == (128, (1, 2, 2, 2), 2)
    assert (cfg.attention_resolutions, cfg.dropout, cfg.image_size) == ((16,), 0.1, 32)
    assert cfg.in_channels == cfg.out_channels == 3


def test_cifar10_parameter_count_matches_ho_et_al():
    with torch.device("meta"):  # no memory, no initialisation cost
        model = UNet(preset("cifar10"))
    n = count_parameters(model)
    assert abs(n - HO_ET_AL_CIFAR10_PARAMETERS) <= 1e-3 * HO_ET_AL_CIFAR10_PARAMETERS, n


def test_learn_sigma_adds_only_output_channels():
    with torch.device("meta"):
        small = count_parameters(UNet(preset("cifar10")))
        large = count_parameters(UNet(preset("cifar10", learn_sigma=True)))
    # conv_out gains 3 output channels: 3 * (128 * 3 * 3) weights + 3 biases.
    assert large - small == 3 * 128 * 9 + 3


def test_tiny_preset_fits_digits():
    cfg = preset("tiny")
    assert (cfg.in_channels, cfg.image_size) == (1, 8)
    assert set(cfg.attention_resolutions) <= set(cfg.resolutions)


def test_to_dict_from_dict_round_trip_through_json():
    cfg = preset("tiny", learn_sigma=True, num_heads=2)
    d = cfg.to_dict()
    assert d["channel_mult"] == list(cfg.channel_mult)
    assert isinstance(d["attention_resolutions"], list)
    back = UNetConfig.from_dict(json.loads(json.dumps(d)))
    assert back == cfg
    assert isinstance(back.channel_mult, tuple)
    assert hash(back) == hash(cfg)


def test_from_dict_missing_keys_take_defaults():
    assert UNetConfig.from_dict({}) == UNetConfig()
    assert UNetConfig.from_dict({"dropout": 0.3}).dropout == 0.3


def test_from_dict_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"'bogus'.*'ch'|'ch'.*'bogus'"):
        UNetConfig.from_dict({**UNetConfig().to_dict(), "ch": 128, "bogus": 1})


def test_from_dict_rejects_non_mapping():
    with pytest.raises(TypeError, match="mapping"):
        UNetConfig.from_dict([("dropout", 0.1)])


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset("tiny").dropout = 0.0


def test_preset_overrides_and_errors():
    assert preset("tiny", dropout=0.0).dropout == 0.0
    assert preset("tiny").dropout == PRESETS["tiny"].dropout  # presets are not mutated
    with pytest.raises(ValueError, match=r"'nope'.*\['cifar10', 'tiny'\]"):
        preset("nope")
    with pytest.raises(ValueError, match="'width'"):
        preset("tiny", width=3)
    with pytest.raises(ValueError, match="dropout"):
        preset("tiny", dropout=1.5)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"in_channels": 0}, r"in_channels must be a positive int, got 0"),
        ({"image_size": True}, r"image_size must be a positive int, got True"),
        ({"base_channels": 128.0}, r"base_channels must be a positive int, got 128\.0"),
        ({"num_res_blocks": 0}, r"num_res_blocks must be a positive int, got 0"),
        ({"num_groups": -32}, r"num_groups must be a positive int, got -32"),
        ({"num_heads": 0}, r"num_heads must be a positive int, got 0"),
        ({"channel_mult": ()}, r"channel_mult must have at least one level"),
        ({"channel_mult": (1, 0, 2, 2)}, r"channel_mult entries .* got 0"),
        ({"channel_mult": "1222"}, r"channel_mult must be a tuple of ints, got '1222'"),
        ({"attention_resolutions": (16, -1)}, r"attention_resolutions entries .* got -1"),
        ({"attention_resolutions": 16}, r"attention_resolutions must be a tuple of ints"),
        ({"dropout": 1.0}, r"dropout must be a float in \[0, 1\), got 1\.0"),
        ({"dropout": -0.1}, r"dropout must be a float in \[0, 1\), got -0\.1"),
        ({"dropout": "0.1"}, r"dropout must be a float in \[0, 1\), got '0\.1'"),
        ({"learn_sigma": 1}, r"learn_sigma must be a bool, got 1"),
        ({"base_channels": 2, "num_groups": 1}, r"base_channels must be even .* got 2"),
        ({"base_channels": 5, "num_groups": 5}, r"base_channels must be even .* got 5"),
        ({"base_channels": 48}, r"channel count 48 .* not divisible by num_groups=32"),
        ({"num_heads": 3}, r"channel count 128 .* not divisible by num_heads=3"),
        ({"image_size": 36}, r"image_size=36 must be divisible by 8"),
        ({"attention_resolutions": (12,)}, r"resolution 12 .* \(32, 16, 8, 4\)"),
        ({"attention_resolutions": (16, 2)}, r"resolution 2 .* \(32, 16, 8, 4\)"),
    ],
)
def test_config_errors_name_the_value(overrides, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**overrides)


def test_unet_requires_a_config():
    with pytest.raises(TypeError, match="UNetConfig"):
        UNet({"in_channels": 1})


# ---------------------------------------------------------------------------------------------
# Forward pass
# ---------------------------------------------------------------------------------------------


def test_timestep_embedding_is_sin_then_cos():
    emb = timestep_embedding(torch.tensor([0, 7]), 16)
    assert emb.shape == (2, 16) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(8), torch.ones(8)]))
    # The lowest frequency is 1 and the highest 1/10000 (Ho et al.'s get_timestep_embedding).
    assert emb[1, 0].item() == pytest.approx(math.sin(7.0))
    assert emb[1, 7].item() == pytest.approx(math.sin(7e-4), rel=1e-5)
    assert emb[1, 8].item() == pytest.approx(math.cos(7.0))


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_output_shape(learn_sigma):
    model = _tiny(learn_sigma=learn_sigma).eval()
    cfg = model.config
    x, t = _inputs(3, cfg)
    out = model(x, t)
    assert out.shape == (3, cfg.out_channels, 8, 8)
    assert cfg.out_channels == (2 if learn_sigma else 1)
    assert out.dtype == x.dtype


def test_dynamic_batch():
    model = _perturbed(_tiny()).eval()
    x, t = _inputs(7, model.config)
    with torch.no_grad():
        full = model(x, t)
        for batch in (1, 2, 7):
            assert model(x[:batch], t[:batch]).shape == (batch, 1, 8, 8)
        # In eval mode each sample is independent of the rest of the batch.
        torch.testing.assert_close(model(x[2:5], t[2:5]), full[2:5], rtol=1e-5, atol=1e-5)


def test_fresh_model_outputs_zero():
    # The zero-initialised output convolution (as in Ho et al.'s code).
    model = _tiny()
    x, t = _inputs(2, model.config)
    assert torch.count_nonzero(model(x, t)) == 0


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
    model = _perturbed(_tiny(dropout=0.5))
    x, t = _inputs(4, model.config)
    model.eval()
    torch.testing.assert_close(model(x, t), model(x, t), rtol=0, atol=0)
    model.train()
    assert not torch.equal(model(x, t), model(x, t))


def test_output_depends_on_t():
    model = _perturbed(_tiny()).eval()
    x, t = _inputs(4, model.config)
    with torch.no_grad():
        out = model(x, t)
        other = model(x, (t + 100) % 1000)
    assert (out - other).abs().amax(dim=(1, 2, 3)).min() > 1e-4


def test_int32_and_int64_timesteps_agree():
    model = _perturbed(_tiny()).eval()
    x, t = _inputs(3, model.config)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t.to(torch.int32)), model(x, t), rtol=0, atol=0)


def test_backward_reaches_every_parameter():
    model = _perturbed(_tiny())
    x, t = _inputs(2, model.config)
    model(x, t).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_float64_model():
    model = _tiny().double().eval()
    x, t = _inputs(2, model.config)
    assert model(x.double(), t).dtype == torch.float64


def test_num_heads_changes_attention_not_parameter_count():
    one, two = _tiny(), _tiny(num_heads=2)
    assert count_parameters(one) == count_parameters(two)
    two.load_state_dict(one.state_dict())
    _perturbed(one)
    _perturbed(two)
    x, t = _inputs(2, one.config)
    with torch.no_grad():
        assert not torch.allclose(one.eval()(x, t), two.eval()(x, t))


@pytest.mark.slow
def test_cifar10_forward_shape():
    model = UNet(preset("cifar10", learn_sigma=True)).eval()
    x, t = _inputs(1, model.config)
    with torch.no_grad():
        assert model(x, t).shape == (1, 6, 32, 32)


def _bad_inputs():
    x, t = _inputs(2, preset("tiny"))
    return [
        ((x[0], t), ValueError, r"x must have shape \[B, C, H, W\], got 3 dims"),
        ((x[None], t), ValueError, r"got 5 dims"),
        ((torch.cat([x, x], 1), t), ValueError, r"x has 2 channels, .* in_channels=1"),
        ((torch.zeros(2, 1, 16, 16), t), ValueError, r"x is 16x16, .* image_size=8"),
        ((torch.zeros(2, 1, 8, 7), t), ValueError, r"x is 8x7"),
        ((x.to(torch.int64), t), TypeError, r"x must have a floating dtype, got torch\.int64"),
        ((x.numpy(), t), TypeError, r"x must be a torch\.Tensor, got ndarray"),
        ((x, 5), TypeError, r"t must be a torch\.Tensor .* got int"),
        ((x, t[:, None]), ValueError, r"t must have shape \[B\], got 2 dims"),
        ((x, t[0]), ValueError, r"t must have shape \[B\], got 0 dims"),
        ((x, t[:1]), ValueError, r"t has batch size 1 but x has batch size 2"),
        ((x, t.float()), TypeError, r"integer timestep indices .* torch\.float32"),
        ((x, t > 0), TypeError, r"integer timestep indices .* torch\.bool"),
    ]


@pytest.mark.parametrize(("args", "error", "match"), _bad_inputs())
def test_forward_input_errors(args, error, match):
    with pytest.raises(error, match=match):
        _tiny()(*args)


# ---------------------------------------------------------------------------------------------
# ONNX export (torch.export-based exporter)
# ---------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings(
    # torch.export's own pytree code, reached through copyreg; nothing of ours.
    r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning",
    # x's and t's batch axes are one symbol, so the exporter names it once.
    r"ignore:# The axis name. batch will not be used:UserWarning",
)
@pytest.mark.parametrize(
    "overrides",
    [
        # Every layer type at both levels, half the blocks: the export costs ~10 s instead of ~20.
        pytest.param({"num_res_blocks": 1}, id="tiny-one-res-block"),
        pytest.param({}, id="tiny", marks=pytest.mark.slow),
    ],
)
def test_onnx_export_matches_pytorch(tmp_path, overrides):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")

    model = _perturbed(_tiny(learn_sigma=True, **overrides)).eval()
    x, t = _inputs(2, model.config)
    path = tmp_path / "tiny.onnx"
    batch = torch.export.Dim("batch")
    with torch.no_grad():
        torch.onnx.export(
            model,
            (x, t),
            str(path),
            dynamo=True,
            input_names=["x", "t"],
            output_names=["model_output"],
            dynamic_shapes={"x": {0: batch}, "t": {0: batch}},
            opset_version=18,
        )

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["x", "t"]
    assert [o.name for o in proto.graph.output] == ["model_output"]
    for value in (*proto.graph.input, *proto.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param, f"{value.name}: batch not dynamic"

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 5):
        xb, tb = _inputs(b, model.config, seed=10 + b)
        (got,) = session.run(["model_output"], {"x": xb.numpy(), "t": tb.numpy()})
        with torch.no_grad():
            want = model(xb, tb).numpy()
        assert got.shape == want.shape == (b, 2, 8, 8)
        assert np.abs(want).max() > 1e-2  # a non-trivial output
        assert np.abs(got - want).max() < 1e-4
