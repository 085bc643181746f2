"""Rectified-flow arithmetic (SD3 / FLUX): the noise path, the schedule, Euler steps and Euler inversion.

Notation (Liu et al. 2023, "Flow Straight and Fast"; Esser et al. 2024, SD3 §2): a sample at noise level σ ∈ [0, 1]
is x_σ = (1 − σ)·x₀ + σ·ε and the network predicts the velocity v = dx_σ/dσ = ε − x₀. A forward (denoising) step
goes from σ_i down to σ_{i+1}; an inversion step runs the same Euler map backwards, from σ_{i+1} up to σ_i, with
the velocity taken at the level it starts from (the lower one), as plain Euler inversion does.

This module names no model: what differs between families (how the network is told the noise level, how the
sigmas are laid out) is one `FlowConvention` each, in `CONVENTIONS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InveditError

#: ``model(x, t) -> v``: a velocity model called at network timestep ``t`` (what `FlowSchedule` hands out).
VelocityModel = Callable[[torch.Tensor, float], torch.Tensor]


def noisy_sample(x0: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """x_σ = (1 − σ)·x₀ + σ·ε, the rectified-flow path (Liu et al. 2023, eq. 1)."""
    return (1 - sigma) * x0 + sigma * noise


def velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The straight path's velocity v = ε − x₀ (Liu et al. 2023, eq. 1)."""
    return noise - x0


def x0_from_velocity(v: torch.Tensor, sample: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Predicted clean sample x₀ = x_σ − σ·v (the path solved for x₀)."""
    return sample - sigma * v


def noise_from_velocity(v: torch.Tensor, sample: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Predicted noise ε = x_σ + (1 − σ)·v (the path solved for ε)."""
    return sample + (1 - sigma) * v


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                    base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """Resolution-dependent shift μ, linear in the image token count (FLUX.1; SD3 paper §5.3.2)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + base_shift - slope * base_seq_len


@dataclass(frozen=True)
class FlowConvention:
    """How one model family's pipeline lays out its sigmas and tells the network the noise level.

    ``timestep_divisor``: the network timestep is (σ·1000, float32) / divisor — SD3's transformer takes σ·1000
    (divisor 1), FLUX's takes σ (the pipeline divides by 1000). ``explicit_sigmas``: the pipeline passes
    ``linspace(1, 1/N, N)`` to the scheduler (FLUX) instead of letting it space the timesteps (SD3).
    """

    timestep_divisor: float
    explicit_sigmas: bool


#: The conventions of diffusers' StableDiffusion3Pipeline ("sd3") and FluxPipeline ("flux").
CONVENTIONS: dict[str, FlowConvention] = {
    "sd3": FlowConvention(timestep_divisor=1.0, explicit_sigmas=False),
    "flux": FlowConvention(timestep_divisor=1000.0, explicit_sigmas=True),
}


@dataclass(frozen=True, eq=False)
class FlowSchedule:
    """The rectified-flow schedule of one run: N + 1 descending sigmas ending at 0 and the network timesteps.

    ``sigmas``: float32 (N + 1,), σ_0 = the noisiest level, σ_N = 0. ``level_timesteps``: the timestep the
    network is called with at each of the N + 1 levels (in the family's convention). Forward step i maps level i
    to level i + 1; the schedule exposes the same interface as `invedit.sampling.DDIMSchedule`'s users need.
    """

    sigmas: torch.Tensor
    level_timesteps: tuple[float, ...]

    def __post_init__(self):
        if self.sigmas.ndim != 1 or len(self.sigmas) < 2 or len(self.level_timesteps) != len(self.sigmas):
            raise ValueError("a flow schedule needs N + 1 >= 2 sigmas and one timestep per level")
        if float(self.sigmas[-1]) != 0.0 or not bool((self.sigmas[1:] < self.sigmas[:-1]).all()):
            raise ValueError("flow sigmas must descend strictly and end at 0")

    @classmethod
    def from_config(cls, config, steps: int, family: str, image_seq_len: int | None = None) -> FlowSchedule:
        """The schedule a diffusers pipeline of ``family`` uses for ``steps`` steps, via diffusers' own
        `FlowMatchEulerDiscreteScheduler.set_timesteps` on the checkpoint's scheduler ``config``.

        Args:
            config: the pipeline's scheduler config (``pipe.scheduler.config``).
            steps: number of denoising steps N.
            family: a key of `CONVENTIONS` (``"sd3"`` or ``"flux"``).
            image_seq_len: image tokens the transformer sees (latent h·w / 4); needed with dynamic shifting.
        Raises:
            InveditError: bad step count, unknown family, or dynamic shifting without ``image_seq_len``.
        """
        from diffusers import FlowMatchEulerDiscreteScheduler

        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InveditError(f"steps must be a positive integer, got {steps!r}")
        if family not in CONVENTIONS:
            raise InveditError(f"no flow convention for model family {family!r}; known: {', '.join(CONVENTIONS)}")
        convention = CONVENTIONS[family]
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(dict(config))
        sigmas = None
        if convention.explicit_sigmas and not scheduler.config.get("use_flow_sigmas", False):
            sigmas = np.linspace(1.0, 1 / steps, steps)
        mu = None
        if scheduler.config.use_dynamic_shifting:
            if image_seq_len is None:
                raise InveditError("this scheduler shifts by resolution (dynamic shifting): image_seq_len is needed")
            mu = calculate_shift(image_seq_len, scheduler.config.get("base_image_seq_len", 256),
                                 scheduler.config.get("max_image_seq_len", 4096),
                                 scheduler.config.get("base_shift", 0.5), scheduler.config.get("max_shift", 1.15))
        scheduler.set_timesteps(steps, sigmas=sigmas, mu=mu)
        levels = scheduler.sigmas.float().cpu()
        # The pipelines call the network with float32 σ·1000 (scheduler.timesteps), FLUX's divided by 1000.
        timesteps = (levels * scheduler.config.num_train_timesteps) / convention.timestep_divisor
        return cls(sigmas=levels, level_timesteps=tuple(float(t) for t in timesteps))

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def timesteps(self) -> tuple[float, ...]:
        """Network timestep at forward step i (the upper level σ_i), i = 0 … N − 1."""
        return self.level_timesteps[:-1]

    def sigma(self, level: int) -> torch.Tensor:
        """σ at level ``level`` (0 … N), a float32 scalar tensor."""
        return self.sigmas[level]

    def inversion_timestep(self, i: int) -> float:
        """Network timestep for `inverse_step` ``i``: the lower level σ_{i+1}, where the inversion step starts."""
        return self.level_timesteps[i + 1]

    def level_position(self, t: float) -> float:
        """Where network timestep ``t`` lies on the schedule, in levels: k at level k, k + f a fraction f of the way
        from level k down to k + 1 (a solver's midpoint: k + 0.5), rounded to 1/1000 of a level so that a midpoint
        computed from either end is one position. Raises ValueError outside the schedule."""
        levels = self.level_timesteps
        for k in range(len(levels) - 1):
            upper, lower = levels[k], levels[k + 1]
            if t == upper:
                return float(k)
            if lower <= t < upper:
                return round(k + (upper - t) / (upper - lower), 3)
        if t == levels[-1]:
            return float(len(levels) - 1)
        raise ValueError(f"timestep {t} lies outside the schedule")

    def step(self, model_output: torch.Tensor, i: int, sample: torch.Tensor) -> torch.Tensor:
        """Forward Euler step i: x_{σ_{i+1}} = x_{σ_i} + (σ_{i+1} − σ_i)·v (FlowMatchEulerDiscreteScheduler.step)."""
        dt = (self.sigmas[i + 1] - self.sigmas[i]).to(sample.device)
        return sample + dt * model_output

    def inverse_step(self, model_output: torch.Tensor, i: int, sample: torch.Tensor) -> torch.Tensor:
        """Inverse of forward step i: x_{σ_i} = x_{σ_{i+1}} + (σ_i − σ_{i+1})·v, v at σ_{i+1} (Euler inversion)."""
        dt = (self.sigmas[i] - self.sigmas[i + 1]).to(sample.device)
        return sample + dt * model_output


@torch.no_grad()
def euler_invert(model: VelocityModel, schedule: FlowSchedule, z0: torch.Tensor,
                 callback: Callable[[int], None] | None = None) -> torch.Tensor:
    """Plain Euler inversion of a rectified flow: the trajectory z*_0 … z*_N, (N + 1, C, h, w), index = steps taken.

    Each step k undoes forward step i = N − 1 − k, from σ_{i+1} up to σ_i, with the velocity evaluated at the
    current (lower) level, ``model(z, schedule.inversion_timestep(i))``. ``z0`` is (1, C, h, w).
    """
    trajectory = [z0[0]]
    z = z0
    for k in range(schedule.steps):
        i = schedule.steps - 1 - k
        z = schedule.inverse_step(model(z, schedule.inversion_timestep(i)), i, z)
        trajectory.append(z[0])
        if callback is not None:
            callback(k)
    return torch.stack(trajectory)


@torch.no_grad()
def euler_sample(model: VelocityModel, schedule: FlowSchedule, z_top: torch.Tensor,
                 callback: Callable[[int], None] | None = None) -> torch.Tensor:
    """Plain Euler sampling from level 0 (σ_0) down to σ_N = 0: the trajectory, (N + 1, C, h, w), index = steps taken.

    Step i calls ``model(z, schedule.timesteps[i])`` and applies `FlowSchedule.step`, as the diffusers pipelines do.
    """
    trajectory = [z_top[0]]
    z = z_top
    for i in range(schedule.steps):
        z = schedule.step(model(z, schedule.timesteps[i]), i, z)
        trajectory.append(z[0])
        if callback is not None:
            callback(i)
    return torch.stack(trajectory)


# ---- higher-order solvers (RF-Solver, FireFlow, Uni-Inv): pure steps over one interval of the schedule ----------
def interval(schedule: FlowSchedule, i: int, inverse: bool = False) -> tuple[float, float, torch.Tensor]:
    """Forward step ``i``'s interval as a solver walks it: ``(t_start, t_mid, h)``.

    Sampling goes from level i down to i + 1 (h = σ_{i+1} − σ_i < 0, starting at ``level_timesteps[i]``);
    inverting (``inverse``) goes from level i + 1 up to i (h = σ_i − σ_{i+1} > 0, starting at the lower level, as
    Euler inversion does). ``t_mid`` is the network timestep at σ_i + (σ_{i+1} − σ_i)/2: the timestep is linear in
    σ in every `FlowConvention`, so it is the mean of the two levels' timesteps (RF-Solver-Edit's ``t_vec_mid``).
    """
    upper, lower = schedule.level_timesteps[i], schedule.level_timesteps[i + 1]
    h = schedule.sigmas[i + 1] - schedule.sigmas[i]
    t_mid = lower + (upper - lower) / 2 if inverse else upper + (lower - upper) / 2
    return (lower, t_mid, -h) if inverse else (upper, t_mid, h)


def half_step(x: torch.Tensor, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The midpoint's sample x + (h/2)·v (RF-Solver, Wang et al. ICML 2025; FireFlow, Deng et al. ICML 2025)."""
    return x + (h / 2).to(x.device) * v


def taylor_step(x: torch.Tensor, v: torch.Tensor, v_mid: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """RF-Solver's second-order step x + h·v + ½h²·v′, with v′ = (v_mid − v)/(h/2) (Wang et al. 2025;
    RF-Solver-Edit's ``denoise``).

    Algebraically x + h·v_mid (the explicit midpoint rule): exact for a velocity linear in t, local error O(h³).
    """
    h = h.to(x.device)
    derivative = (v_mid - v) / (h / 2)
    return x + h * v + 0.5 * h**2 * derivative


def midpoint_update(x: torch.Tensor, v_mid: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """FireFlow's update x + h·v_mid, the midpoint rule (Deng et al. 2025; its reference's ``denoise_fireflow``)."""
    return x + h.to(x.device) * v_mid


def _walk(schedule: FlowSchedule, inverse: bool, first: int = 0, count: int | None = None):
    """Forward step indices a solver walks: sampling i = first … N − 1; inverting N − 1 down to N − count."""
    n = schedule.steps
    if inverse:
        return [n - 1 - k for k in range(n if count is None else count)]
    return list(range(first, n))


@torch.no_grad()
def rf_solver_path(model: VelocityModel, schedule: FlowSchedule, z: torch.Tensor, inverse: bool,
                   callback: Callable[[int], None] | None = None) -> torch.Tensor:
    """RF-Solver (Wang et al. 2025): two velocities per step (at the start and at the midpoint) and the
    `taylor_step`; the trajectory (N + 1, C, h, w), index = steps taken. ``inverse``: from z₀ up to the noisiest
    level (inversion), else from level 0 down to σ = 0 (sampling). ``z`` is (1, C, h, w)."""
    trajectory = [z[0]]
    for k, i in enumerate(_walk(schedule, inverse)):
        t_start, t_mid, h = interval(schedule, i, inverse)
        v = model(z, t_start)
        v_mid = model(half_step(z, v, h), t_mid)
        z = taylor_step(z, v, v_mid, h)
        trajectory.append(z[0])
        if callback is not None:
            callback(k)
    return torch.stack(trajectory)


@torch.no_grad()
def fireflow_path(model: VelocityModel, schedule: FlowSchedule, z: torch.Tensor, inverse: bool,
                  callback: Callable[[int], None] | None = None) -> torch.Tensor:
    """FireFlow (Deng et al. 2025): the midpoint rule whose start velocity is the previous step's midpoint
    velocity, so only the first step evaluates the model at its start: N + 1 calls for N steps. Same layout as
    `rf_solver_path`."""
    trajectory = [z[0]]
    carried = None
    for k, i in enumerate(_walk(schedule, inverse)):
        t_start, t_mid, h = interval(schedule, i, inverse)
        v = model(z, t_start) if carried is None else carried
        carried = model(half_step(z, v, h), t_mid)
        z = midpoint_update(z, carried, h)
        trajectory.append(z[0])
        if callback is not None:
            callback(k)
    return torch.stack(trajectory)


def uni_inv_steps(steps: int, alpha: float) -> int:
    """Steps Uni-Inv inverts (and Uni-Edit then denoises): ⌊α·N⌋ (UniEdit-Flow's delay rate α; its diffusers
    schedulers floor it)."""
    return math.floor(alpha * steps)


@torch.no_grad()
def uni_inv(model: VelocityModel, schedule: FlowSchedule, z0: torch.Tensor, count: int, zero_init: bool = False,
            callback: Callable[[int], None] | None = None) -> torch.Tensor:
    """Uni-Inv (Jiao et al., UniEdit-Flow, ICLR 2026; its reference's ``UniInvEulerScheduler``): a predictor–corrector
    inversion over the ``count`` least noisy steps. Predict x̃ = z + h·v with the last velocity, evaluate v at x̃ on the
    upper level, correct z ← z + h·v. The first velocity is the model's at σ = 0 (zero with ``zero_init``):
    count + 1 calls (count with ``zero_init``). Returns z*_0 … z*_count, (count + 1, C, h, w), index = steps taken."""
    trajectory = [z0[0]]
    z, v = z0, None
    for k, i in enumerate(_walk(schedule, True, count=count)):
        t_start, _, h = interval(schedule, i, inverse=True)
        if v is None:
            v = torch.zeros_like(z) if zero_init else model(z, t_start)
        v = model(z + h.to(z.device) * v, schedule.level_timesteps[i])
        z = z + h.to(z.device) * v
        trajectory.append(z[0])
        if callback is not None:
            callback(k)
    return torch.stack(trajectory)
