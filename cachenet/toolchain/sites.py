"""Cut a model into stages at its sites, run it stage by stage, export the stages as ONNX.

A *site* is the end of a stage before the last: after each ResNet block but the
last, after each TinyCNN stage but the last (at its max pool), after each
hidden layer of an MLP. :func:`staged` returns the stages as modules, the site
names and the multiply-adds to the end of each stage. A site's *features* are
its activation average-pooled to 2x2 (flattened; an MLP's hidden vector as it
is): what every layer cache keys on.

:class:`TorchRunner` runs the stages for :class:`cachenet.layercache.LayerCascade`
(the cloud's full model, test-time flips included); :func:`export_segments`
writes each stage as an ONNX model for the edge (``act`` and ``features`` out of
a site's stage, ``logits`` out of the last).
"""

from __future__ import annotations

import itertools
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cachenet.exceptions import ConfigError, ExportError
from cachenet.toolchain.export import PARITY_ATOL
from cachenet.toolchain.models.cache import MLP, TinyCNN
from cachenet.toolchain.models.flops import count_macs
from cachenet.toolchain.models.resnet import ResNet

log = logging.getLogger(__name__)

FEATURE_GRID = 2


def site_features(act: torch.Tensor, grid: int = FEATURE_GRID) -> torch.Tensor:
    """The features layer caches key on: ``grid`` x ``grid`` average pooling, flattened."""
    if act.dim() == 4:
        act = nn.functional.adaptive_avg_pool2d(act, grid)
    return torch.flatten(act, 1)


class _Head(nn.Module):
    def __init__(self, pool: nn.Module, fc: nn.Module) -> None:
        super().__init__()
        self.pool, self.fc = pool, fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


@dataclass
class Staged:
    stages: list[nn.Module]
    site_names: list[str]
    views: int  # 2 when the model answers the mean over the input and its mirror image
    grid: int = FEATURE_GRID  # site features: the activation average-pooled to grid x grid

    def cumulative_macs(self, input_shape: tuple[int, ...]) -> tuple[list[int], int]:
        """MACs to the end of each site's stage, and of the whole model (one view)."""
        total, out = 0, []
        x = torch.zeros(1, *input_shape)
        with torch.no_grad():
            for stage in self.stages:
                total += count_macs(stage, tuple(x.shape[1:]))
                x = stage.eval()(x)
                out.append(total)
        return [m * self.views for m in out[:-1]], out[-1] * self.views


def staged(model: nn.Module, grid: int = FEATURE_GRID) -> Staged:
    """``model``'s stages and sites, features pooled to ``grid`` x ``grid``; ConfigError
    for a model we cannot cut."""
    views = 2 if getattr(model, "tta", "none") == "flip" else 1
    if isinstance(model, ResNet):
        blocks = list(model.layers)
        if len(blocks) < 2:
            raise ConfigError("a ResNet needs two blocks or more to have a site")
        stages = [nn.Sequential(model.normalize, model.stem, blocks[0]), *blocks[1:-1],
                  nn.Sequential(blocks[-1], _Head(model.pool, model.fc))]
        return Staged(stages, [f"block{i + 1}" for i in range(len(blocks) - 1)], views, grid)
    if isinstance(model, TinyCNN):
        layers = list(model.features)
        cuts = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
        if not cuts:
            raise ConfigError("a TinyCNN needs two stages or more to have a site")
        bounds = [0, *cuts, len(layers)]
        parts = [nn.Sequential(*layers[a:b]) for a, b in itertools.pairwise(bounds)]
        stages = [nn.Sequential(model.normalize, parts[0]), *parts[1:-1],
                  nn.Sequential(parts[-1], _Head(model.pool, model.fc))]
        return Staged(stages, [f"stage{i + 1}" for i in range(len(parts) - 1)], 1, grid)
    if isinstance(model, MLP):
        layers = list(model.body)
        if len(layers) < 2:
            raise ConfigError("an MLP needs a hidden layer to have a site")
        pairs = [nn.Sequential(*layers[i:i + 2]) for i in range(0, len(layers), 2)]
        stages = [nn.Sequential(model.normalize, nn.Flatten(), pairs[0]), *pairs[1:],
                  model.fc]
        return Staged(stages, [f"hidden{i + 1}" for i in range(len(pairs))], 1)
    raise ConfigError(f"layer caches can cut ResNet, TinyCNN and MLP models, not "
                      f"{type(model).__name__}")


class TorchRunner:
    """Runs a :class:`Staged` model for :class:`cachenet.layercache.LayerCascade`, on the
    device its weights are on; with test-time flips, both views travel together."""

    def __init__(self, staged_model: Staged) -> None:
        self.s = staged_model
        self.device = next(self.s.stages[0].parameters(), torch.empty(0)).device
        self.last = len(self.s.stages) - 1

    def stage(self, i: int, state: torch.Tensor | np.ndarray) -> torch.Tensor:
        if i == 0:
            x = torch.from_numpy(np.ascontiguousarray(state)).to(self.device)
            state = torch.cat([x, x.flip(3)]) if self.s.views == 2 else x
        with torch.inference_mode():
            return self.s.stages[i](state)

    def _n(self, state: torch.Tensor) -> int:
        return len(state) // self.s.views

    def features(self, state: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return site_features(state[:self._n(state)], self.s.grid).float().cpu().numpy()

    def take(self, state: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        idx = torch.as_tensor(rows, device=state.device)
        if self.s.views == 2:
            idx = torch.cat([idx, idx + self._n(state)])
        out = state.index_select(0, idx)
        if state.dim() == 4 and state.is_contiguous(memory_format=torch.channels_last):
            # Keep the layout the convolutions were laid out for (for_inference): a
            # plain NCHW activation would cost every later convolution a reorder.
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def logits(self, state: torch.Tensor) -> np.ndarray:
        out = state.float()
        if self.s.views == 2:
            n = self._n(state)
            out = 0.5 * (out[:n] + out[n:])
        return out.cpu().numpy()


@torch.no_grad()
def all_features(staged_model: Staged, x: np.ndarray, batch_size: int = 500
                 ) -> tuple[list[np.ndarray], np.ndarray]:
    """Every site's features and the logits for all of ``x`` (no early exit)."""
    runner = TorchRunner(staged_model)
    feats: list[list[np.ndarray]] = [[] for _ in staged_model.site_names]
    logits = []
    for a in range(0, len(x), batch_size):
        state = x[a:a + batch_size]
        for i in range(len(staged_model.stages)):
            state = runner.stage(i, state)
            if i < runner.last:
                feats[i].append(runner.features(state))
        logits.append(runner.logits(state))
    return [np.concatenate(f) for f in feats], np.concatenate(logits)


class _Segment(nn.Module):
    """One stage for export: a site's stage answers its activation and features."""

    def __init__(self, stage: nn.Module, site: bool, grid: int) -> None:
        super().__init__()
        self.stage, self.site, self.grid = stage, site, grid

    def forward(self, x: torch.Tensor):  # type: ignore[override]
        act = self.stage(x)
        return (act, site_features(act, self.grid)) if self.site else act


def export_segments(staged_model: Staged, input_shape: tuple[int, ...], out: Path,
                    input_name: str, example: np.ndarray) -> list[Path]:
    """Write each stage to ``out/segment-<i>.onnx`` (dynamic batch axis) and check that
    the chain answers ``example`` with the model's logits; ExportError otherwise."""
    if staged_model.views != 1:
        raise ConfigError("the edge's segments cannot carry test-time flips")
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    x = torch.rand(2, *input_shape)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    for i, stage in enumerate(staged_model.stages):
        site = i < len(staged_model.stages) - 1
        seg = _Segment(stage.eval(), site, staged_model.grid).eval()
        path = out / f"segment-{i}.onnx"
        names = ["act", "features"] if site else ["logits"]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(seg, (x,), str(path), dynamo=False, opset_version=17,
                                  input_names=[input_name if i == 0 else "act_in"],
                                  output_names=names,
                                  dynamic_axes={n: {0: "batch"} for n in
                                                [input_name if i == 0 else "act_in", *names]})
        except Exception as exc:  # the exporter raises many types
            raise ExportError(f"export of stage {i} failed: {exc}") from exc
        with torch.no_grad():
            x = seg(x)[0] if site else seg(x)
        paths.append(path)
    _check_chain(staged_model, paths, example)
    return paths


def _check_chain(staged_model: Staged, paths: list[Path], example: np.ndarray) -> None:
    from cachenet.layercache.segments import SegmentRunner

    runner = SegmentRunner.open(paths)
    got = runner.chain(example)
    with torch.no_grad():
        h = torch.from_numpy(example)
        for stage in staged_model.stages:
            h = stage.eval()(h)
    diff = float(np.abs(got - h.numpy()).max())
    if diff > PARITY_ATOL:  # the whole model's export is held to the same
        raise ExportError(f"the ONNX segments' chain differs from the model by {diff:.3g} "
                          f"(limit {PARITY_ATOL:g})")
