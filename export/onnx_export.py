"""PyTorch -> ONNX: export a denoiser with its diffusion settings (the float32 file and a float16
variant).

:func:`export_onnx` writes one self-describing ``.onnx`` file (the contract of docs/onnx.md):

- inputs ``x`` (float32 [B, C, H, W]) and ``t`` (int64 [B], timestep indices of the model's own
  schedule), output ``model_output`` (float32 [B, C or 2C, H, W]), the batch dimension dynamic;
- the weights inside the file (refused above protobuf's 2 GB);
- ``metadata_props["refdiff"]``: the JSON of :class:`refdiff.onnx_contract.ModelMetadata` (diffusion
  settings, U-Net settings, weight dtype, refdiff version);
- checked by ``onnx.checker`` (full check, with shape inference) before it replaces the target.

With ``fp16=True`` the weights and most arithmetic are float16 while the inputs and outputs stay
float32 (the runtime does not change), and so do the parts where float16 loses accuracy: group
normalisation (statistics and affine parameters), the attention softmax and the sinusoidal
timestep embedding (its arguments reach t ≈ 1000, far beyond float16's integer precision).

:func:`refdiff.export.verify_onnx` (:mod:`.parity`) then checks the file against the PyTorch
model.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from refdiff._checks import check_int
from refdiff._deps import require
from refdiff._io import atomic_path, check_output_file, created_folder
from refdiff._version import __version__
from refdiff.onnx_contract import (
    INPUT_NAMES,
    METADATA_KEY,
    OUTPUT_NAME,
    WEIGHT_KINDS,
    ModelMetadata,
)
from refdiff.settings import Diffusion

__all__ = ["MAX_MODEL_BYTES", "eval_mode", "export_onnx", "model_settings"]

#: A single-file ONNX model is one protobuf message, which cannot exceed 2 GiB.
MAX_MODEL_BYTES = 2**31 - 1
MIN_OPSET = 18


# ------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------


class _Float16Model(nn.Module):
    """A float16 copy of a model behind float32 inputs and outputs.

    Group normalisation stays float32, statistics and affine parameters (never rounded to
    float16): refdiff's GroupNorm32 layers normalise in float32 whatever their input dtype, and
    plain ``nn.GroupNorm`` layers (a diffusers UNet's) are replaced by GroupNorm32 copies.
    refdiff's U-Net already computes its timestep embedding and attention softmax in float32.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        from refdiff.nn.unet import GroupNorm32

        self.inner = copy.deepcopy(model)
        for parent in list(self.inner.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.GroupNorm:
                    norm = GroupNorm32(
                        child.num_groups, child.num_channels, child.eps, child.affine
                    )
                    norm.load_state_dict(child.state_dict())
                    setattr(parent, name, norm)
        keep = {
            id(t)
            for m in self.inner.modules()
            if isinstance(m, GroupNorm32)
            for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]
        }
        for t in [*self.inner.parameters(), *self.inner.buffers()]:
            if t.is_floating_point() and id(t) not in keep:
                t.data = t.data.half()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(torch.float16), t).to(torch.float32)


def model_settings(model: nn.Module, model_config: Mapping[str, Any] | None) -> dict[str, Any]:
    if model_config is not None:
        if not isinstance(model_config, Mapping):
            raise TypeError(f"model_config must be a dict, got {type(model_config).__name__}")
        return dict(model_config)
    cfg = getattr(model, "config", None)
    to_dict = getattr(cfg, "to_dict", None)
    return dict(to_dict()) if callable(to_dict) else {}


def _check_consistent(model_config: Mapping[str, Any], diffusion: Diffusion) -> None:
    c, h, w = diffusion.image_shape
    learned = diffusion.out_channels == 2 * c
    if "in_channels" in model_config and model_config["in_channels"] != c:
        raise ValueError(
            f"the model takes in_channels={model_config['in_channels']} but the diffusion "
            f"config's image_shape is {list(diffusion.image_shape)}"
        )
    if "image_size" in model_config and model_config["image_size"] not in (h, w):
        raise ValueError(
            f"the model takes image_size={model_config['image_size']} but the diffusion "
            f"config's image_shape is {list(diffusion.image_shape)}"
        )
    if "learn_sigma" in model_config and bool(model_config["learn_sigma"]) != learned:
        raise ValueError(
            f"the model has learn_sigma={model_config['learn_sigma']} but the diffusion config's "
            f"variance is {diffusion.variance.value!r} ({'learned' if learned else 'fixed'})"
        )


def _model_bytes(model: nn.Module, fp16: bool) -> int:
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        size = 2 if fp16 and tensor.is_floating_point() else tensor.element_size()
        total += tensor.numel() * size
    return total


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's known noise (not errors): a torch-internal deprecation warning and
    log lines about torchvision operators refdiff does not use."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _rename_batch_dim(model_proto: Any, name: str = "batch") -> None:
    """Give the dynamic batch dimension a readable name (the exporter calls it s0, s13, ...)."""
    graph = model_proto.graph
    first = graph.input[0].type.tensor_type.shape.dim[0]
    old = first.dim_param
    if not old:
        return
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == old:
                dim.dim_param = name


def _strip_debug_info(model_proto: Any) -> None:
    """Drop the exporter's per-node debugging metadata (Python stack traces with the exporting
    machine's file paths, FX node dumps): it is most of a small model's file and no part of the
    contract."""
    for node in model_proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def export_onnx(
    model: nn.Module,
    diffusion: Diffusion,
    path: str | os.PathLike[str],
    *,
    opset: int = 18,
    fp16: bool = False,
    model_config: Mapping[str, Any] | None = None,
    weights: str | None = None,
    progress: bool = False,
) -> Path:
    """Export ``model`` (a denoiser ``(x, t) -> model_output``) to one self-describing ONNX file.

    Parameters
    ----------
    model : torch.nn.Module
        The denoiser, float32 (e.g. from ``refdiff.training.checkpoint.load_model``). It is put in
        eval mode for the export and restored afterwards; it is not modified.
    diffusion : Diffusion
        Its diffusion settings; stored in the metadata and checked against the model's output.
    path : str or PathLike
        Where to write the ``.onnx`` file (replaced only once the new file passes the checker).
    opset : int
        ONNX opset, 18 or later.
    fp16 : bool
        Float16 weights and arithmetic (float32 I/O, normalisation, softmax, timestep embedding).
    model_config : dict, optional
        The network's settings for the metadata; default ``model.config.to_dict()`` if present.
    weights : {"ema", "raw"}, optional
        Which weights of a refdiff checkpoint the model holds, recorded in the metadata so that a
        later parity check compares like with like (None: not recorded).
    progress : bool
        Show a tqdm bar over the two steps (conversion, then the checker), on stderr: a large
        model takes a while.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        Inconsistent model and diffusion settings, a model of 2 GB or more, an opset below 18.
    TypeError
        A model that is not a float32 ``torch.nn.Module`` or a diffusion that is not a
        :class:`Diffusion`.
    """
    import onnx

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(diffusion, Diffusion):
        raise TypeError(f"diffusion must be a Diffusion, got {type(diffusion).__name__}")
    if weights is not None and weights not in WEIGHT_KINDS:
        raise ValueError(f"weights must be one of {WEIGHT_KINDS} or None, got {weights!r}")
    opset = check_int(opset, "opset", minimum=MIN_OPSET)
    floating = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if floating - {torch.float32}:
        raise TypeError(
            f"export takes a float32 model, got parameters of dtype {sorted(map(str, floating))}; "
            "pass fp16=True for a float16 export of the float32 model"
        )
    path = check_output_file(path, what="ONNX file")
    config = model_settings(model, model_config)
    _check_consistent(config, diffusion)
    nbytes = _model_bytes(model, fp16)
    if nbytes >= MAX_MODEL_BYTES:
        raise ValueError(
            f"the model's weights take {nbytes / 2**30:.2f} GiB; a single-file ONNX model must stay "
            "below 2 GiB (protobuf's limit). Export with fp16=True, or use a smaller model"
        )

    tqdm = require("tqdm", "torch", "progress bars").tqdm
    bar = tqdm(total=2, desc="export", unit="step", disable=not progress, leave=False)
    bar.set_postfix_str("torch.export -> ONNX")
    c, h, w = diffusion.image_shape
    T = diffusion.num_timesteps
    dev = next(iter(model.parameters()), torch.empty(0)).device
    x = torch.randn(2, c, h, w, device=dev)
    t = torch.tensor([0, T - 1], dtype=torch.int64, device=dev)
    with eval_mode(model), torch.no_grad():
        out = model(x, t)
        want = (2, diffusion.out_channels, h, w)
        if tuple(out.shape) != want:
            raise ValueError(
                f"the model outputs shape {tuple(out.shape)} for x of shape {tuple(x.shape)}; the "
                f"diffusion config ({diffusion.variance.value!r} variance) needs {want}"
            )
        module = _Float16Model(model).eval() if fp16 else model
        batch = torch.export.Dim.DYNAMIC
        with _quiet_exporter():
            program = torch.onnx.export(
                module,
                (x, t),
                dynamo=True,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"x": {0: batch}, "t": {0: batch}},
                opset_version=opset,
                external_data=False,
                optimize=True,
                verbose=False,
            )
    assert program is not None  # the dynamo exporter returns its program
    proto = program.model_proto
    _rename_batch_dim(proto)
    _strip_debug_info(proto)
    meta = ModelMetadata(
        diffusion=diffusion,
        model=config,
        dtype="float16" if fp16 else "float32",
        refdiff_version=__version__,
        weights=weights,
    )
    for i in reversed(range(len(proto.metadata_props))):
        if proto.metadata_props[i].key == METADATA_KEY:
            del proto.metadata_props[i]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta.to_json()
    proto.doc_string = (
        f"refdiff {__version__} denoiser: x [B,{c},{h},{w}] float32, t [B] int64 -> "
        f"{OUTPUT_NAME} [B,{diffusion.out_channels},{h},{w}] float32"
    )
    size = proto.ByteSize()
    if size >= MAX_MODEL_BYTES:
        raise ValueError(f"the exported model is {size / 2**30:.2f} GiB; it must stay below 2 GiB")
    bar.update(1)
    bar.set_postfix_str("onnx.checker")
    with created_folder(path.parent), atomic_path(path, suffix=".onnx") as tmp:  # whole or nothing
        onnx.save_model(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    bar.update(1)
    bar.close()
    return path
