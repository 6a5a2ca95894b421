"""A physically based time-varying volume: a rising smoke plume from a stable-fluids solver.

:func:`smoke_clip` runs Stam's stable fluids on a cubic grid with solid walls:
each step adds buoyancy (hot, dense smoke rises and its weight pulls it down),
advects velocity, smoke density and temperature semi-Lagrangianly (trilinear
back-tracing), diffuses the scalars a little (advection-diffusion), and
projects the velocity onto its divergence-free part. The pressure Poisson
equation with zero normal gradient at the walls is solved exactly by a
discrete cosine transform, so a step costs a few FFTs and interpolations.

It is the simulation clip of the volume benchmark and tests (Mantaflow's bake
fails headless in bpy 5.0.1, so it cannot be the source):

    from finr3d.simulation import smoke_clip
    clip = smoke_clip(frames=48, size=64)      # (48, 64, 64, 64) float32, (t, z, y, x), z up

``python assets/make_smoke.py`` writes it to a ``.npy`` (``finr3d fit smoke.npy --axes tzyx``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["smoke_clip", "project", "advect"]


def _grid(shape):
    return np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")


def advect(field: np.ndarray, velocity: np.ndarray, dt: float, grid) -> np.ndarray:
    """Semi-Lagrangian advection: ``field`` sampled at ``x - dt u(x)`` (trilinear, clamped to the box).

    field : (Z, Y, X) ; velocity : (3, Z, Y, X) in cells per unit time, components (z, y, x).
    """
    from scipy.ndimage import map_coordinates

    back = [g - dt * u for g, u in zip(grid, velocity)]
    return map_coordinates(field, back, order=1, mode="nearest").astype(np.float32)


def project(velocity: np.ndarray) -> np.ndarray:
    """The divergence-free part of ``velocity`` (3, Z, Y, X), with zero normal flow at the walls.

    Solves ``∇²p = ∇·u`` with ``∂p/∂n = 0`` by a type-II DCT (exact for the
    7-point Laplacian on cell centres) and returns ``u - ∇p``.
    """
    from scipy.fft import dctn, idctn

    shape = velocity.shape[1:]
    div = np.zeros(shape, np.float64)
    for axis in range(3):
        div += np.gradient(velocity[axis], axis=axis)
    coef = dctn(div, type=2, norm="ortho")
    lam = np.zeros(shape)
    for axis, n in enumerate(shape):
        k = np.arange(n)
        eig = 2.0 * (np.cos(np.pi * k / n) - 1.0)
        lam = lam + eig.reshape([-1 if a == axis else 1 for a in range(3)])
    lam[0, 0, 0] = 1.0
    coef /= lam
    coef[0, 0, 0] = 0.0
    p = idctn(coef, type=2, norm="ortho")
    out = velocity.astype(np.float64).copy()
    for axis in range(3):
        out[axis] -= np.gradient(p, axis=axis)
    # walls: no flow through them
    out[0, 0], out[0, -1] = 0.0, 0.0
    out[1, :, 0], out[1, :, -1] = 0.0, 0.0
    out[2, :, :, 0], out[2, :, :, -1] = 0.0, 0.0
    return out.astype(np.float32)


def _diffuse(field: np.ndarray, amount: float) -> np.ndarray:
    """One explicit diffusion step ``f + a ∇²f`` (a <= 1/6 keeps it stable), zero flux at the walls."""
    if amount <= 0:
        return field
    pad = np.pad(field, 1, mode="edge")
    lap = (pad[2:, 1:-1, 1:-1] + pad[:-2, 1:-1, 1:-1] + pad[1:-1, 2:, 1:-1] + pad[1:-1, :-2, 1:-1]
           + pad[1:-1, 1:-1, 2:] + pad[1:-1, 1:-1, :-2] - 6 * field)
    return (field + amount * lap).astype(np.float32)


def smoke_clip(frames: int = 48, size: int = 64, *, steps_per_frame: int = 2, dt: float = 1.0,
               buoyancy: float = 0.08, weight: float = 0.02, diffusion: float = 0.02, seed: int = 0) -> np.ndarray:
    """A smoke plume rising from a hot source near the floor, with a seeded swirl.

    Parameters
    ----------
    frames : int
        Frames recorded (one every ``steps_per_frame`` solver steps).
    size : int
        Cells per axis of the cubic box.
    dt : float
        Time step in cell units.
    buoyancy, weight : float
        Upward force per unit temperature and downward force per unit density.
    diffusion : float
        Diffusion of smoke and temperature per step (cells², explicit).
    seed : int
        Seeds the initial swirl, so the same arguments give the same clip.

    Returns
    -------
    (frames, size, size, size) float32 array, axes (t, z, y, x), z up
        Smoke density in [0, 1] (clipped), recorded after each frame's steps.
    """
    if frames < 1 or size < 4 or steps_per_frame < 1:
        raise ValueError(f"smoke_clip needs frames >= 1, size >= 4 and steps_per_frame >= 1, "
                         f"got {frames}, {size}, {steps_per_frame}")
    rng = np.random.default_rng(seed)
    shape = (size, size, size)
    grid = _grid(shape)
    z, y, x = (g / (size - 1) for g in grid)
    # a soft spherical source near the floor, a little off centre
    source = np.exp(-((z - 0.12) ** 2 + (y - 0.45) ** 2 + (x - 0.55) ** 2) / (2 * 0.06**2)).astype(np.float32)
    density = np.zeros(shape, np.float32)
    temperature = np.zeros(shape, np.float32)
    # a smooth random swirl: low-frequency noise, made divergence-free
    noise = rng.standard_normal((3, 6, 6, 6)).astype(np.float32)
    from scipy.ndimage import zoom

    velocity = np.stack([zoom(n, size / 6, order=3)[:size, :size, :size] for n in noise]) * 0.3
    velocity = project(velocity)
    out = np.empty((frames, *shape), np.float32)
    for f in range(frames):
        for _ in range(steps_per_frame):
            density = np.minimum(density + 0.25 * dt * source, 1.5)
            temperature = temperature + 0.5 * dt * source
            velocity[0] += dt * (buoyancy * temperature - weight * density)
            velocity = np.stack([advect(velocity[a], velocity, dt, grid) for a in range(3)])
            velocity = project(velocity)
            density = _diffuse(advect(density, velocity, dt, grid), diffusion)
            temperature = _diffuse(advect(temperature, velocity, dt, grid), diffusion) * 0.99  # cooling
        out[f] = np.clip(density, 0.0, 1.0)
    return out
