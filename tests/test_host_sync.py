"""A training step and a sampling step never read an array back to the host to check timesteps.

On a GPU backend, ``int(xp.max(t))`` is a device synchronisation. Timesteps are checked where they
are made (on the host, by the training timestep sampler, or from a Python int in a sampling loop)
and travel as :class:`refdiff.Timesteps`; the core then checks only shapes, namespaces and devices.

The steps run on array-api-strict arrays whose ``__int__``, ``__float__``, ``__bool__`` and
``__index__`` raise: any read-back of a value fails the test. The PyTorch training step is run
with the same conversions of ``torch.Tensor`` forbidden.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import refdiff as rd

strict = pytest.importorskip("array_api_strict")

READ_BACKS = ("__int__", "__float__", "__bool__", "__index__", "__complex__")


class HostReadBack(AssertionError):
    pass


@contextlib.contextmanager
def no_read_back(cls, methods=READ_BACKS):
    """Make converting an array of ``cls`` to a Python scalar raise :class:`HostReadBack`."""
    saved = {m: cls.__dict__.get(m) for m in methods}

    def forbid(name):
        def method(self, *args, **kwargs):
            raise HostReadBack(f"{cls.__name__}.{name} was called: a read-back to the host")

        return method

    for m in methods:
        setattr(cls, m, forbid(m))
    try:
        yield
    finally:
        for m, v in saved.items():
            if v is None:
                delattr(cls, m)
            else:
                setattr(cls, m, v)


SETTINGS = [
    ("epsilon", "fixed_small", "simple"),
    ("v", "learned_range", "vlb"),
    ("x0", "learned", "hybrid"),
]


@pytest.mark.parametrize(("prediction", "variance", "loss"), SETTINGS)
def test_training_step_core_makes_no_read_back(prediction, variance, loss):
    d = rd.Diffusion(
        rd.get_schedule("cosine", 50),
        prediction=prediction,
        variance=variance,
        image_shape=(2, 4, 4),
    )
    rng = np.random.default_rng(0)
    B = 6
    x0 = strict.asarray(rng.uniform(-1, 1, (B, 2, 4, 4)), dtype=strict.float32)
    noise = rd.standard_normal(0, strict.arange(B), 3, (2, 4, 4), xp=strict, dtype=strict.float32)
    t_host = rng.integers(0, 50, B)
    t = d.timesteps(t_host, strict)  # checked here, on the host, before the step
    with no_read_back(type(x0)):
        x_t = d.q_sample(x0, t, noise)
        out = (
            strict.concat([x_t * 0.5] * (d.out_channels // 2), axis=1)
            if variance != "fixed_small"
            else x_t * 0.5
        )
        terms = d.training_losses(out, x0, x_t, t, noise, loss_type=loss)
    # the same numbers as the plain, value-checked path
    ref = rd.training_losses(
        d.schedule,
        np.asarray(out),
        np.asarray(x0),
        np.asarray(x_t),
        t_host,
        np.asarray(noise),
        loss_type=loss,
        prediction=prediction,
        variance=variance,
    )
    np.testing.assert_allclose(np.asarray(terms.loss), ref.loss, rtol=1e-6)


@contextlib.contextmanager
def counting_read_backs(cls, methods=READ_BACKS):
    """Count the conversions of ``cls`` arrays to Python scalars (they still work)."""
    calls: list[str] = []
    saved = {m: cls.__dict__.get(m) for m in methods}

    def counted(name, original):
        def method(self, *args, **kwargs):
            calls.append(name)
            return original(self, *args, **kwargs)

        return method

    for m in methods:
        if saved[m] is not None:
            setattr(cls, m, counted(m, saved[m]))
    try:
        yield calls
    finally:
        for m, v in saved.items():
            if v is not None:
                setattr(cls, m, v)


@pytest.mark.parametrize("sampler", sorted(rd.SAMPLERS))
def test_sampling_loop_makes_no_read_back_per_step(sampler):
    """One read-back per sampling call, whatever the number of steps: the final check that the
    samples are finite (which names the step where they stopped being so). The solvers' step
    coefficients are host floats computed before the loop."""
    d = rd.Diffusion(rd.get_schedule("linear", 30), prediction="v", image_shape=(1, 3, 3))
    x_T = rd.standard_normal(1, strict.arange(4), 7, (1, 3, 3), xp=strict, dtype=strict.float32)
    counts = {}
    for steps in (4, 16):
        with counting_read_backs(type(x_T)) as calls:
            x = d.sample(lambda x, t: 0.3 * x, 4, sampler=sampler, steps=steps, xp=strict, x_T=x_T)
        counts[steps] = len(calls)
    assert x.shape == (4, 1, 3, 3)
    assert counts == {4: 1, 16: 1}


def test_value_checked_timesteps_do_read_back():
    """The guard works: a plain array of timesteps is range-checked, which reads it back."""
    x = strict.zeros((2, 1), dtype=strict.float32)
    with no_read_back(type(x)), pytest.raises(HostReadBack):
        rd.q_sample(rd.get_schedule("cosine", 10), x, strict.asarray([1, 2]), x)


def test_timesteps_are_checked_where_they_are_made():
    d = rd.Diffusion(rd.get_schedule("cosine", 10))
    with pytest.raises(ValueError, match="timestep 10 is out of range"):
        d.timesteps(np.array([0, 10]), strict)
    with pytest.raises(TypeError, match="integers"):
        d.timesteps(np.array([0.5]), strict)
    t = d.timesteps(np.array([3, 4]), strict)
    other = rd.get_schedule("cosine", 20)
    with pytest.raises(ValueError, match="T = 10 steps, this one has T = 20"):
        rd.q_sample(other, strict.zeros((2, 1)), t, strict.zeros((2, 1)))


def test_pytorch_training_step_makes_no_read_back(tmp_path):
    """The trainer's forward and backward on torch tensors: no Tensor-to-scalar conversion."""
    torch = pytest.importorskip("torch")
    from refdiff.runs import resolve_config
    from refdiff.training.trainer import Trainer

    cfg = resolve_config(
        None,
        {
            "recipe": "none",
            "unet": {"preset": "tiny", "base_channels": 8, "num_groups": 4, "num_res_blocks": 1},
            "diffusion": {
                "schedule": {"name": "cosine", "T": 20},
                "prediction": "v",
                "variance": "learned_range",
            },
            "loss": "vlb",
            "timestep_sampler": "loss_second_moment",
            "batch_size": 8,
            "steps": 1,
        },
    )
    trainer = Trainer(cfg, tmp_path / "run", device="cpu", progress=False, log=lambda s: None)
    try:
        with no_read_back(torch.Tensor, ("__int__", "__float__", "__bool__", "__index__", "item")):
            loss, t, per_example = trainer.state.forward_backward()
        assert per_example.shape == (8,)
        assert torch.isfinite(loss) and t.shape == (8,)
    finally:
        trainer.close()
