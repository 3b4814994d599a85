"""refdiff: a reference implementation of Gaussian diffusion models.

The core (everything importable from ``refdiff`` itself) is pure array-API code: it runs on NumPy,
CuPy, PyTorch and array-api-strict arrays and never imports torch or cupy at module level. Its free
functions take the schedule and the settings as explicit arguments (the validation API);
:class:`Diffusion` holds a model's settings as one value and calls them (the application API).
"""

from __future__ import annotations

from ._array import Timesteps
from ._enums import Spacing
from ._version import __version__
from .bound import (
    BoundResult,
    MonteCarloBound,
    MonteCarloPlan,
    mc_estimate_from_terms,
    mc_plan,
    variational_bound,
    variational_bound_mc,
)
from .forward import (
    GaussianMoments,
    q_mean_variance,
    q_posterior_mean_variance,
    q_s_to_t_mean_variance,
    q_sample,
    q_step_mean_variance,
    q_step_sample,
)
from .losses import (
    Decoder,
    LossTerms,
    LossType,
    continuous_gaussian_log_likelihood,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
    prior_kl,
    sum_flat,
    training_losses,
    vb_term,
)
from .noise import standard_normal
from .oracle import TOY_MIXTURES, GaussianMixture, toy_mixture
from .plans import Plan, run_plan
from .reverse import (
    PMeanVariance,
    Prediction,
    Variance,
    eps_from_v,
    eps_from_x0,
    p_mean_variance,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)
from .sampler_registry import Option, SamplerChoice, SamplerSpec
from .samplers import (
    DEFAULT_SAMPLER,
    SAMPLERS,
    ddim_sample,
    ddpm_sample,
    dpmpp_2m_sample,
    dpmpp_2m_sde_sample,
    dpmpp_3m_sample,
    euler_sample,
    get_sampler,
    heun_sample,
    network_calls,
    sample,
)
from .schedules import (
    SCHEDULES,
    Schedule,
    get_schedule,
    make_betas,
    rescale_zero_terminal_snr,
    select_timesteps,
    space_timesteps,
)
from .settings import Diffusion

__all__ = [
    "DEFAULT_SAMPLER",
    "SAMPLERS",
    "SCHEDULES",
    "TOY_MIXTURES",
    "BoundResult",
    "Decoder",
    "Diffusion",
    "GaussianMixture",
    "GaussianMoments",
    "LossTerms",
    "LossType",
    "MonteCarloBound",
    "MonteCarloPlan",
    "Option",
    "PMeanVariance",
    "Plan",
    "Prediction",
    "SamplerChoice",
    "SamplerSpec",
    "Schedule",
    "Spacing",
    "Timesteps",
    "Variance",
    "__version__",
    "continuous_gaussian_log_likelihood",
    "ddim_sample",
    "ddpm_sample",
    "discretized_gaussian_log_likelihood",
    "dpmpp_2m_sample",
    "dpmpp_2m_sde_sample",
    "dpmpp_3m_sample",
    "eps_from_v",
    "eps_from_x0",
    "euler_sample",
    "get_sampler",
    "get_schedule",
    "heun_sample",
    "make_betas",
    "mc_estimate_from_terms",
    "mc_plan",
    "mean_flat",
    "network_calls",
    "normal_kl",
    "p_mean_variance",
    "prior_kl",
    "q_mean_variance",
    "q_posterior_mean_variance",
    "q_s_to_t_mean_variance",
    "q_sample",
    "q_step_mean_variance",
    "q_step_sample",
    "rescale_zero_terminal_snr",
    "run_plan",
    "sample",
    "select_timesteps",
    "space_timesteps",
    "standard_normal",
    "sum_flat",
    "toy_mixture",
    "training_losses",
    "v_from_x0_eps",
    "variational_bound",
    "variational_bound_mc",
    "vb_term",
    "x0_from_eps",
    "x0_from_v",
]
