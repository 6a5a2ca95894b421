"""FactorizedField: per-mode networks contracted by a tensor decomposition.

A field over ``d`` normalized coordinates in ``[-1, 1]^d`` is split into modes,
each covering one or more axes. Mode ``m`` has a network ``φ_m`` that maps its
coordinates to ``D_m`` features; the decomposition (cp, tucker, tt) contracts the
features into ``C`` channel values, plus a learned per-channel bias.

On a grid, ``φ_m`` runs on the ``N_m`` coordinates of its mode only, never on
the ``Π N_m`` grid points: that is where F-INR's speed comes from.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import numpy as np
import torch
from torch import nn

from finr3d import __version__
from finr3d.backbones import MAX_BASIS, make_backbone
from finr3d.codec import jsonable
from finr3d.config import FieldConfig
from finr3d.decompositions import DECOMPOSITIONS
from finr3d.errors import FormatError, InputError
from finr3d.coords import lattice

__all__ = ["FactorizedField", "load", "default_omega0"]

#: Elements per chunk of a grid evaluation (64 MiB of float32 output).
CHUNK_ELEMENTS = 1 << 24
#: Largest grid ``grid()`` will allocate as one array.
MAX_GRID_ELEMENTS = 1 << 31
#: Largest contraction of the other modes :meth:`FactorizedField.plane_reader` keeps (256 MiB of float32).
PLANE_CACHE_VALUES = 1 << 26


def default_omega0(backbone: str, samples: int) -> float | None:
    """First-layer frequency for a mode with ``samples`` stored samples per axis.

    A per-axis network must resolve about ``samples / 2`` periods over [-1, 1];
    the paper defaults (SIREN/FINER 30, WIRE 20) serve up to ~256 samples and
    the first layer is made proportionally faster beyond.
    """
    if backbone in ("siren", "finer"):
        return float(min(300.0, max(30.0, samples / 8.0)))
    if backbone == "wire":
        return float(min(200.0, max(20.0, samples / 12.0)))
    return None


def _normalize_modes(modes, ndim: int) -> list[tuple[int, ...]]:
    if modes is None:
        return [(i,) for i in range(ndim)]
    try:
        out = [tuple(int(a) for a in m) for m in modes]
    except TypeError as exc:
        raise InputError(f"modes must be a list of axis lists, e.g. [[0], [1], [2]], got {modes!r}") from exc
    flat = sorted(a for m in out for a in m)
    if flat != list(range(ndim)) or any(len(m) == 0 for m in out):
        raise InputError(f"modes {modes!r} must cover each of the {ndim} axes exactly once")
    if len(out) < 2:
        raise InputError(f"a factorized field needs at least 2 modes, got {modes!r}")
    return out


class FactorizedField(nn.Module):
    """A neural field ``f: [-1,1]^d -> R^C`` as a decomposition of per-mode networks.

    Parameters
    ----------
    ndim : int
        Number of coordinate axes d.
    channels : int
        Output channels C.
    config : FieldConfig
    target_info : dict, optional
        The fitted target's ``describe()`` (kind, shape, transform, ...).
    samples : sequence of int, optional
        Stored samples per axis, used to pick backbone frequencies.
    """

    def __init__(self, ndim: int, channels: int, config: FieldConfig | None = None, *,
                 target_info: dict | None = None, samples: Sequence[int] | None = None):
        super().__init__()
        config = dataclasses.replace(config or FieldConfig()).validate()
        if ndim < 2:
            raise InputError(f"a field needs at least 2 axes, got {ndim}")
        if channels < 1:
            raise InputError(f"channels must be at least 1, got {channels}")
        self.ndim, self.channels = int(ndim), int(channels)
        self.modes = _normalize_modes(config.modes, ndim)
        config.modes = [list(m) for m in self.modes]
        self.independent = (not config.channel_factor) and channels > 1
        n_blocks = channels if self.independent else 1
        decomp_cls = DECOMPOSITIONS[config.decomposition]
        try:
            blocks = [decomp_cls(len(self.modes), config.rank, 1 if self.independent else channels)
                      for _ in range(n_blocks)]
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        self.blocks = nn.ModuleList(blocks)
        config.rank = list(blocks[0].ranks) if len(blocks[0].ranks) > 1 else blocks[0].ranks[0]
        self.config = config
        dims = blocks[0].feature_dims()
        samples = list(samples) if samples is not None else [256] * ndim
        nets = []
        for m, axes in enumerate(self.modes):
            options = {}
            omega = config.omega0 if config.omega0 is not None else default_omega0(
                config.backbone, max(samples[a] for a in axes))
            if omega is not None:
                options["omega0"] = omega
            if len(axes) == 1 and config.basis:
                options["basis"] = min(samples[axes[0]], MAX_BASIS) if config.basis == "grid" else int(config.basis)
            nets.append(make_backbone(config.backbone, len(axes), dims[m] * n_blocks,
                                      width=config.width, depth=config.depth, **options))
        self.nets = nn.ModuleList(nets)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.target_info = dict(target_info or {})
        self.history: dict = {}
        #: optional sparse local residual (finr3d.local_detail.LocalDetail), added by grid() and points()
        self.detail = None

    # ------------------------------------------------------------------ basics
    @property
    def kind(self) -> str:
        return self.target_info.get("kind", "signal")

    @property
    def decomposition(self):
        return self.blocks[0]

    @property
    def ranks(self) -> tuple[int, ...]:
        return self.blocks[0].ranks

    @property
    def max_rank(self) -> int:
        """The largest rank prefix (:func:`finr3d.ranks.largest_rank`: a TT field's output bond left out)."""
        from finr3d.ranks import largest_rank

        return largest_rank(self.config.decomposition, self.ranks)

    @property
    def device(self) -> torch.device:
        return self.bias.device

    def prefix(self, rank=None) -> tuple[int, ...]:
        try:
            return self.blocks[0].prefix(rank)
        except ValueError as exc:
            raise InputError(str(exc)) from exc

    def __repr__(self):
        c = self.config
        return (f"FactorizedField({self.kind}, {c.decomposition} ranks={self.ranks}, backbone={c.backbone}, "
                f"modes={self.modes}, channels={self.channels}, params={self.parameter_count():,})")

    # --------------------------------------------------------------- features
    def mode_coords(self, coords: Sequence[torch.Tensor], m: int) -> torch.Tensor:
        """Mode ``m``'s input points on the outer-product grid of per-axis ``coords``: (N_m, len(modes[m]))."""
        axes = self.modes[m]
        if len(axes) == 1:
            return coords[axes[0]].reshape(-1, 1)
        grids = torch.meshgrid(*[coords[a] for a in axes], indexing="ij")
        return torch.stack([g.reshape(-1) for g in grids], dim=-1)

    def mode_features(self, coords: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per-mode features on the outer-product grid: M tensors (N_m, D_m)."""
        return [net(self.mode_coords(coords, m)) for m, net in enumerate(self.nets)]

    def _contract(self, feats, prefix, points: bool):
        if not self.independent:
            blk = self.blocks[0]
            return blk.contract_points(feats, prefix) if points else blk.contract_grid(feats, prefix)
        outs = []
        for c, blk in enumerate(self.blocks):
            sub = [f.reshape(f.shape[0], len(self.blocks), -1)[:, c] for f in feats]
            outs.append(blk.contract_points(sub, prefix) if points else blk.contract_grid(sub, prefix))
        return torch.cat(outs, dim=-1)

    def _to_axis_order(self, out: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """(N_mode0, ..., N_mode{M-1}, C) -> (n_0, ..., n_{d-1}, C) in axis order."""
        order = [a for m in self.modes for a in m]
        out = out.reshape(*[sizes[a] for a in order], out.shape[-1])
        if order != sorted(order):
            perm = [order.index(a) for a in range(self.ndim)] + [self.ndim]
            out = out.permute(*perm)
        return out

    # ------------------------------------------------------------- evaluation
    def _as_coords(self, coords, device) -> list[torch.Tensor]:
        if isinstance(coords, (int, np.integer)):
            coords = [int(coords)] * self.ndim
        if isinstance(coords, (tuple, list)) and all(isinstance(c, (int, np.integer)) for c in coords):
            if len(coords) != self.ndim:
                raise InputError(f"expected {self.ndim} resolutions, got {len(coords)}")
            for n in coords:
                if not 1 <= n <= 65536:
                    raise InputError(f"resolution must be between 1 and 65536 per axis, got {n}")
            return [lattice(int(n), device=device) for n in coords]
        if len(coords) != self.ndim:
            raise InputError(f"expected coordinates for {self.ndim} axes, got {len(coords)}")
        out = [torch.as_tensor(np.asarray(c) if not torch.is_tensor(c) else c, dtype=torch.float32).to(device).reshape(-1)
               for c in coords]
        if any(len(c) == 0 for c in out):
            raise InputError("every axis needs at least one coordinate")
        return out

    def forward_grid(self, coords: Sequence[torch.Tensor], rank=None) -> torch.Tensor:
        """Differentiable values on the outer product of per-axis coordinates.

        coords : d tensors (n_i,) of normalized coordinates.
        Returns (n_0, ..., n_{d-1}, C). Not chunked: used for training batches.
        """
        return self.grid_from_features(self.mode_features(coords), [len(c) for c in coords], rank)

    def grid_from_features(self, feats: Sequence[torch.Tensor], sizes: Sequence[int], rank=None) -> torch.Tensor:
        """Differentiable values on a grid from its mode features (:meth:`mode_features`), in axis order.

        feats : per mode (N_m, D_m); sizes : the grid's points per axis (n_0, ..., n_{d-1}).
        Returns (n_0, ..., n_{d-1}, C). One set of features serves several rank prefixes (nested-rank training).
        """
        out = self._contract(feats, self.prefix(rank), points=False) + self.bias
        return self._to_axis_order(out, sizes)

    forward = forward_grid

    @torch.no_grad()
    def grid(self, resolution=256, rank=None, *, squeeze: bool = True,
             chunk_elements: int = CHUNK_ELEMENTS, detail: bool = True) -> np.ndarray:
        """Evaluate on a grid; chunked so memory stays bounded.

        Parameters
        ----------
        resolution : int, sequence of int, or d arrays of normalized coordinates
            Samples per axis (a lattice on [-1, 1], one int for every axis or one
            per axis) or explicit per-axis coordinates.
        rank : int or tuple, optional
            Evaluate the rank-prefix model.
        squeeze : bool
            Drop the channel axis of single-channel fields.
        detail : bool
            Add the local detail (:attr:`detail`) when the field has one.

        Returns
        -------
        (n_0, ..., n_{d-1}[, C]) float32 numpy array.
        """
        was_training = self.training
        self.eval()
        try:
            axes = self._as_coords(resolution, self.device)
            sizes = [len(c) for c in axes]
            total = math.prod(sizes) * self.channels
            if total > MAX_GRID_ELEMENTS:
                raise InputError(
                    f"a {'x'.join(map(str, sizes))} grid with {self.channels} channel(s) is {total:,} values, "
                    f"more than {MAX_GRID_ELEMENTS:,}; evaluate it in pieces (pass coordinate sub-ranges)"
                )
            prefix = self.prefix(rank)
            feats = self.mode_features(axes)
            out = np.empty([*sizes, self.channels], dtype=np.float32)
            first = self.modes[0]
            rows = feats[0].shape[0]
            per_row = max(1, math.prod(f.shape[0] for f in feats[1:]) * self.channels)
            step = max(1, min(rows, chunk_elements // per_row))
            # chunk along the first mode's points; for a multi-axis first mode, along its first axis
            lead = len(axes[first[0]])
            inner = rows // lead
            step = max(1, step // inner) if inner > 1 else step
            for start in range(0, lead, step):
                stop = min(lead, start + step)
                sub = list(axes)
                sub[first[0]] = axes[first[0]][start:stop]
                f0 = feats[0][start * inner: stop * inner]
                res = self._contract([f0] + feats[1:], prefix, points=False) + self.bias
                res = self._to_axis_order(res, [len(c) for c in sub])
                index = [slice(None)] * self.ndim
                index[first[0]] = slice(start, stop)
                out[tuple(index)] = res.float().cpu().numpy()
            if detail and self.detail is not None:
                out += self.detail.grid([a.detach().cpu().numpy() for a in axes])[..., None].astype(np.float32)
            if squeeze and self.channels == 1:
                out = out[..., 0]
            return out
        finally:
            self.train(was_training)

    @torch.no_grad()
    def plane_reader(self, coords, rank=None, *, detail: bool = True, max_cached: int = PLANE_CACHE_VALUES):
        """Values on the planes of a grid along axis 0, read a few planes at a time.

        Every decomposition is linear in the first mode's features, so when the
        first mode is axis 0 alone the other modes are contracted once, against
        the identity in its place: ``(D_0, n_1, ..., n_{d-1}, C)``, at most
        ``max_cached`` values. Each read is then one matrix product per channel,
        written in place; otherwise each read evaluates :meth:`grid` on its planes.

        Parameters
        ----------
        coords : d arrays of normalized coordinates (axis 0's planes and the other axes' samples)
        rank : int or tuple, optional
            Evaluate the rank-prefix model.
        detail : bool
            Add the local detail (:attr:`detail`) when the field has one.

        Returns
        -------
        callable ``read(i0, i1, out=None)``
            Fills and returns ``out``, a ``(C, i1 - i0, n_1, ..., n_{d-1})`` float32 array
            (allocated when None): planes ``i0..i1-1``, channel first.
        """
        was_training = self.training
        self.eval()
        try:
            axes = self._as_coords(coords, self.device)
            sizes = [len(c) for c in axes]
            rest = math.prod(sizes[1:])
            prefix = self.prefix(rank)
            feats = self.mode_features(axes)
            d0 = feats[0].shape[1]
            cached = None
            if self.modes == [(a,) for a in range(self.ndim)] and d0 * rest * self.channels <= max_cached:
                eye = torch.eye(d0, device=self.device, dtype=feats[0].dtype)
                table = self._contract([eye] + feats[1:], prefix, points=False)  # (D_0, n_1.., C)
                cached = [table[..., c].reshape(d0, rest).contiguous() for c in range(self.channels)]
                del table
                rows = [torch.full((1, rest), float(b), device=self.device) for b in self.bias.reshape(-1)]
        finally:
            self.train(was_training)
        lattice0 = axes[0]
        numpy_axes = [a.detach().cpu().numpy() for a in axes]
        use_detail = detail and self.detail is not None

        @torch.no_grad()
        def read(i0: int, i1: int, out=None) -> np.ndarray:
            if out is None:
                out = np.empty([self.channels, i1 - i0, *sizes[1:]], np.float32)
            if cached is not None and self.device.type == "cpu" and all(o.flags.c_contiguous for o in out):
                for c in range(self.channels):  # in place: each channel's planes are one contiguous block
                    torch.addmm(rows[c], feats[0][i0:i1], cached[c],
                                out=torch.from_numpy(out[c].reshape(i1 - i0, rest)))
            elif cached is not None:
                for c in range(self.channels):
                    out[c] = torch.addmm(rows[c], feats[0][i0:i1], cached[c]).cpu().numpy().reshape(out[c].shape)
            else:
                values = self.grid([lattice0[i0:i1], *axes[1:]], rank=rank, squeeze=False, detail=False)
                out[...] = np.moveaxis(values, -1, 0)
            if use_detail:
                out[0] += self.detail.grid([numpy_axes[0][i0:i1], *numpy_axes[1:]]).astype(np.float32)
            return out

        return read

    def points(self, coords, rank=None, *, chunk: int = 1 << 16, detail: bool = True) -> torch.Tensor:
        """Values at arbitrary points.

        coords : (P, d) tensor or array of normalized coordinates.
        Returns a (P, C) tensor, differentiable when ``coords`` or the weights need grad.
        """
        x = coords if torch.is_tensor(coords) else torch.as_tensor(np.asarray(coords), dtype=torch.float32)
        x = x.to(self.device, torch.float32)
        if x.ndim != 2 or x.shape[1] != self.ndim:
            raise InputError(f"points expects a (P, {self.ndim}) array, got shape {tuple(x.shape)}")
        prefix = self.prefix(rank)
        outs = []
        for start in range(0, x.shape[0], chunk):
            xc = x[start:start + chunk]
            feats = [net(xc[:, list(axes)]) for axes, net in zip(self.modes, self.nets)]
            outs.append(self._contract(feats, prefix, points=True) + self.bias)
        if not outs:
            return torch.zeros(0, self.channels, device=self.device)
        out = torch.cat(outs, dim=0)
        if detail and self.detail is not None:
            res = self.detail.points(x.detach().cpu().numpy().astype(np.float64))
            out = out + torch.as_tensor(np.asarray(res, np.float32), device=self.device).reshape(-1, 1)
        return out

    # ---------------------------------------------------------- rank prefixes
    def truncate(self, rank) -> "FactorizedField":
        """The prefix model at ``rank``: a smaller, independent FactorizedField.

        CP keeps components ``:r``, Tucker the core's leading block, TT the
        leading bonds. ``truncate(r).grid(x)`` equals ``grid(x, rank=r)``.
        """
        prefix = self.prefix(rank)
        config = dataclasses.replace(self.config, rank=list(prefix) if len(prefix) > 1 else prefix[0],
                                     modes=[list(m) for m in self.modes])
        new = FactorizedField.__new__(FactorizedField)
        nn.Module.__init__(new)
        new.ndim, new.channels, new.modes, new.independent = self.ndim, self.channels, self.modes, self.independent
        blocks = []
        for blk in self.blocks:
            nb = type(blk)(blk.n_modes, prefix, blk.channels)
            with torch.no_grad():
                nb.mixing_parameter().copy_(blk.mixing(prefix))
            blocks.append(nb.to(self.device))
        new.blocks = nn.ModuleList(blocks)
        n_blocks = len(self.blocks)
        nets = []
        for m, net in enumerate(self.nets):
            idx = self.blocks[0].feature_index(m, prefix)
            full = self.blocks[0].feature_dims()[m]
            index = torch.cat([idx + b * full for b in range(n_blocks)])
            nets.append(net.select_outputs(index))
        new.nets = nn.ModuleList(nets)
        new.bias = nn.Parameter(self.bias.detach().clone())
        new.config = config
        new.target_info = dict(self.target_info)
        new.history = dict(self.history)
        new.detail = self.detail
        return new

    # ---------------------------------------------------------- introspection
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def parts(self) -> dict[str, int]:
        """Parameter count per part: each mode network, the core/channel factor, the bias."""
        out = {f"mode{m}:{self.config.backbone}{list(axes)}": sum(p.numel() for p in net.parameters())
               for m, (axes, net) in enumerate(zip(self.modes, self.nets))}
        out[f"{self.config.decomposition}:mixing"] = sum(b.mixing_parameter().numel() for b in self.blocks)
        out["bias"] = self.bias.numel()
        return out

    def nbytes(self, bytes_per_value: float = 4.0) -> dict[str, int]:
        """Bytes per part at ``bytes_per_value`` (4 fp32, 2 fp16, 1 int8), plus ``total``."""
        parts = {k: int(math.ceil(v * bytes_per_value)) for k, v in self.parts().items()}
        parts["total"] = sum(parts.values())
        return parts

    def describe(self) -> dict:
        """JSON-ready summary: config, ranks, sizes, target and fit history."""
        return {
            "kind": self.kind,
            "ndim": self.ndim,
            "channels": self.channels,
            "modes": [list(m) for m in self.modes],
            "decomposition": self.config.decomposition,
            "ranks": list(self.ranks),
            "backbone": self.config.backbone,
            "field_config": jsonable(dataclasses.asdict(self.config)),
            "backbone_configs": [net.config() for net in self.nets],
            "parameters": self.parameter_count(),
            "parts": self.parts(),
            "target": jsonable(self.target_info),
            "history": jsonable({k: v for k, v in self.history.items() if k != "curve"}),
        }

    # ---------------------------------------------------------------- outputs
    def to_mesh(self, resolution: int = 256, rank=None, level: float = 0.0, **kwargs):
        """Marching-cubes mesh (trimesh, world units) of an SDF or volume field."""
        from finr3d.meshing import extract_mesh

        return extract_mesh(self, resolution, rank=rank, level=level, **kwargs)

    def to_parts(self, rank=None) -> tuple[dict, dict[str, np.ndarray]]:
        """The ``.finr`` header and float32 tensors of the prefix model at ``rank``."""
        model = self if rank is None else self.truncate(rank)
        header = dict(model.describe(), library_version=__version__, format="finr3d-field")
        tensors = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
        return header, tensors

    def encode(self, rank=None, quantization: str = "auto", *, editable: bool = False, detail: bool = True,
               step: float | None = None, metadata: bool = True) -> bytes:
        """The exact bytes :meth:`save` writes, without touching the disk (sweeps size files with it)."""
        from finr3d import compact_io

        return compact_io.encode_field(self, rank=rank, quantization=quantization, editable=editable,
                                       detail=detail, step=step, metadata=metadata)

    def file_bytes(self, rank=None, quantization: str = "auto", **options) -> int:
        """Bytes of the file ``save(path, rank=rank, quantization=quantization, **options)`` would write."""
        return len(self.encode(rank, quantization, **options))

    def save(self, path, rank=None, quantization: str = "auto", *, overwrite: bool = True, editable: bool = False,
             detail: bool = True, step: float | None = None, metadata: bool = True) -> int:
        """Write a ``.finr`` file holding the prefix model at ``rank``; returns the bytes written.

        By default the file is **compact** (format version 2): the per-axis
        networks are baked into cosine coefficients of their factor curves on
        the stored samples and quantized with one step (``quantization`` picks
        it: fp32 stores the baked coefficients unquantized, fp16 / int8 / int6 /
        int4 are ever coarser steps, ``step`` sets it in field units; ``auto``,
        the default, is fp16's step, finer for an SDF whose fit it would blur:
        :func:`finr3d.compact_io.auto_step`), so a lower rank or a coarser step
        gives a much smaller file. Between the
        stored samples the loaded field is the cosine interpolant of the
        networks' curves. ``editable=True`` keeps the network weights instead
        (a resumable, fine-tunable file, ``quantization`` as in version 1; ``auto`` is fp16).
        ``detail=False`` leaves out the local detail. ``metadata=False`` drops the
        optional metadata (fit history, source). The write is atomic.
        """
        from finr3d import codec

        blob = self.encode(rank, quantization, editable=editable, detail=detail, step=step, metadata=metadata)
        return codec.write_bytes(path, blob, overwrite=overwrite)

    def precision_critical(self) -> list[str]:
        """Tensors kept at fp32 under every quantization.

        A first sine layer's weights are multiplied by ω0 (30-300), so block
        quantization error there is amplified; they are tiny (width x k values).
        """
        return [k for k in self.state_dict() if k.endswith("body.0.linear.weight")]

    @classmethod
    def from_file(cls, path) -> "FactorizedField":
        """A field from a ``.finr`` file of version 1 or 2: a path, or the file's bytes."""
        from finr3d import codec, compact_io

        header, tensors, ff = compact_io.load_parts(path)
        try:
            field = cls.from_parts(header, tensors)
        except FormatError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise FormatError(f"the stored field does not rebuild ({exc}); re-export the file") from exc
        if ff.detail is not None:
            field.detail = codec._load_detail(ff)
        return field

    @classmethod
    def from_parts(cls, header: dict, tensors: dict[str, np.ndarray]) -> "FactorizedField":
        """Rebuild a field from a decoded header and tensors; bad content raises FormatError."""
        from finr3d.header_schema import validate_field_meta

        validate_field_meta(header)  # every key read below has a checked type and range
        try:
            fc = dict(header["field_config"])
            config = FieldConfig(**{f.name: fc[f.name] for f in dataclasses.fields(FieldConfig) if f.name in fc})
            ndim, channels = int(header["ndim"]), int(header["channels"])
            if not (2 <= ndim <= 8 and 1 <= channels <= 64):
                raise ValueError(f"ndim={ndim}, channels={channels} out of range")
            bconf = header["backbone_configs"]
            if not isinstance(bconf, list):
                raise ValueError("backbone_configs is not a list")
            present = sum(int(np.asarray(t).size) for t in tensors.values())

            def build(device):
                with torch.device(device):
                    field = cls(ndim, channels, config, target_info=header.get("target") or {})
                    # rebuild the nets with the saved options (frequencies etc.)
                    nets = []
                    for bc in bconf:
                        bc = dict(bc)
                        name = bc.pop("name")
                        nets.append(make_backbone(name, bc.pop("in_dim"), bc.pop("out_dim"), **bc))
                    if len(nets) != len(field.nets):
                        raise ValueError("backbone count does not match the modes")
                    for m, (new, made) in enumerate(zip(nets, field.nets)):
                        # the decomposition (from field_config) fixes each mode's inputs and outputs
                        if (new.in_dim, new.out_dim) != (made.in_dim, made.out_dim):
                            raise ValueError(f"backbone_configs.{m} maps {new.in_dim} -> {new.out_dim} features, "
                                             f"the decomposition needs {made.in_dim} -> {made.out_dim}")
                    field.nets = nn.ModuleList(nets)
                return field

            # a hostile header could declare a huge model: size it on the meta device (no memory) first,
            # and build it only if the file really holds that many values
            declared = build("meta").parameter_count()
            if declared != present:
                raise ValueError(f"the header declares {declared:,} parameters but the file holds {present:,}")
            field = build("cpu")
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise FormatError(f"the field header is invalid ({type(exc).__name__}: {exc}); "
                              "the file may come from an incompatible finr3d version") from exc
        expected = field.state_dict()
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise FormatError(f"the file's tensors do not match its header (missing {missing[:3]}, "
                              f"unexpected {extra[:3]}); the file is damaged or from another version")
        state = {}
        for k, ref in expected.items():
            arr = np.asarray(tensors[k])
            if tuple(arr.shape) != tuple(ref.shape):
                raise FormatError(f"tensor {k!r} has shape {arr.shape}, the header implies {tuple(ref.shape)}")
            if not np.isfinite(arr).all():
                raise FormatError(f"tensor {k!r} holds NaN/Inf values; the file is damaged")
            state[k] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        field.load_state_dict(state)
        hist = header.get("history")
        field.history = dict(hist) if isinstance(hist, dict) else {}
        return field


def load(path) -> FactorizedField:
    """Load a ``.finr`` file; broken or hostile files raise :class:`finr3d.errors.FormatError`."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file; check the path")
    return FactorizedField.from_file(path)

