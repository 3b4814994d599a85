"""The training losses and the decoder on torch tensors, with autograd (skipped without torch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import to_numpy

import refdiff as rd
from refdiff import get_schedule

torch = pytest.importorskip("torch")

SCHED = get_schedule("cosine", 50)


def _batch(C=2, learned=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand((4, C, 3, 3), generator=g) * 2 - 1
    x0 = torch.round((x0 + 1) * 127.5) / 127.5 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 5, 30, 49])
    xt = rd.q_sample(SCHED, x0, t, noise)
    out = torch.randn((4, 2 * C if learned else C, 3, 3), generator=g, requires_grad=True)
    return x0, noise, t, xt, out


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_simple_loss_targets(prediction):
    x0, noise, t, xt, out = _batch()
    terms = rd.training_losses(SCHED, out, x0, xt, t, noise, prediction=prediction)
    target = {"epsilon": noise, "x0": x0, "v": rd.v_from_x0_eps(SCHED, x0, t, noise)}[prediction]
    torch.testing.assert_close(terms.loss, ((target - out) ** 2).mean(dim=(1, 2, 3)))
    terms.loss.sum().backward()
    assert out.grad is not None and torch.isfinite(out.grad).all()


def test_hybrid_freezes_mean_in_vlb():
    x0, noise, t, xt, out = _batch(learned=True)
    terms = rd.training_losses(
        SCHED, out, x0, xt, t, noise, loss_type="hybrid", variance="learned_range"
    )
    assert terms.vb is not None and torch.isfinite(terms.loss).all()
    (g_vb,) = torch.autograd.grad(terms.vb.sum(), out, retain_graph=True)
    assert torch.all(g_vb[:, :2] == 0) and torch.any(g_vb[:, 2:] != 0)
    (g_mse,) = torch.autograd.grad(terms.mse.sum(), out)
    assert torch.all(g_mse[:, 2:] == 0)
    # the vlb objective trains the mean too
    terms = rd.training_losses(
        SCHED, out, x0, xt, t, noise, loss_type="vlb", variance="learned_range"
    )
    (g,) = torch.autograd.grad(terms.loss.sum(), out)
    assert torch.any(g[:, :2] != 0) and torch.isfinite(g).all()


def test_vlb_loss_is_T_times_the_term_in_bits():
    x0, noise, t, xt, out = _batch()
    terms = rd.training_losses(SCHED, out.detach(), x0, xt, t, noise, loss_type="vlb")
    nats = rd.vb_term(SCHED, out.detach(), x0, xt, t, clip_denoised=False).nats  # training: no clip
    torch.testing.assert_close(terms.loss, nats / (18 * math.log(2)) * 50)


def test_decoder_gradients_finite_in_extreme_tails():
    x0 = torch.tensor([[-1.0, 1.0, 0.0, 0.5]])
    means = torch.tensor([[5.0, -5.0, 30.0, -30.0]], requires_grad=True)
    ls = torch.full((1, 4), -6.0, requires_grad=True)
    ll = rd.discretized_gaussian_log_likelihood(x0, means=means, log_scales=ls)
    assert torch.isfinite(ll).all()
    ll.sum().backward()
    assert torch.isfinite(means.grad).all() and torch.isfinite(ls.grad).all()


def test_unused_branch_of_the_bound_leaks_no_nan_gradient():
    """The decoder is evaluated for every t and the KL too; the branch not taken must not turn
    the gradient into NaN (cosine, T = 1000, t = 999, float32, learned variance, ε̂ = -3,
    log σ² = -30: a finite loss once came with a NaN gradient)."""
    s = get_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((2, 1, 2, 2), 0.3)
    noise = torch.randn(2, 1, 2, 2, generator=g)
    for t_val in (999, 0, 500):
        t = torch.full((2,), t_val)
        xt = rd.q_sample(s, x0, t, noise)
        out = torch.cat([torch.full((2, 1, 2, 2), -3.0), torch.full((2, 1, 2, 2), -30.0)], dim=1)
        out.requires_grad_(True)
        terms = rd.training_losses(s, out, x0, xt, t, noise, loss_type="vlb", variance="learned")
        terms.loss.sum().backward()
        assert torch.isfinite(terms.loss).all() and torch.isfinite(out.grad).all(), t_val


def test_training_loss_bad_input():
    x0, noise, t, xt, out = _batch()
    with pytest.raises(ValueError, match="only trained by the 'hybrid' or 'vlb'"):
        rd.training_losses(SCHED, torch.cat([out, out], 1), x0, xt, t, noise, variance="learned")
    with pytest.raises(ValueError, match="unknown loss type 'l1'"):
        rd.training_losses(SCHED, out, x0, xt, t, noise, loss_type="l1")


def test_torch_matches_numpy_float64():
    x0, noise, t, xt, out = _batch(learned=True)
    args = [a.detach().double() for a in (out, x0, xt)]
    got = rd.training_losses(
        SCHED, *args, t, noise.double(), loss_type="hybrid", variance="learned_range"
    )
    ref = rd.training_losses(
        SCHED,
        *(to_numpy(a) for a in args),
        t.numpy(),
        noise.double().numpy(),
        loss_type="hybrid",
        variance="learned_range",
    )
    np.testing.assert_allclose(to_numpy(got.loss), ref.loss, rtol=1e-12)
