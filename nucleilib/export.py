"""Export: the trained U-Net as ONNX, for tools that run models without PyTorch (onnxruntime, deepImageJ, QuPath).

The file holds the network (batch norm folded into the convolutions, as ``predict`` runs it), logits out, and in
its metadata what a user needs around it: the input normalization, the names of the outputs, the height/width
multiple, and the checkpoint it came from. Needs the optional packages of ``pip install "nucleilib[export]"``.
"""

from __future__ import annotations

import contextlib
import io as text_io
import json
import warnings
from pathlib import Path

import torch

from nucleilib import __version__
from nucleilib.checkpoint import load_model
from nucleilib.io import atomic_path, file_sha256
from nucleilib.predict import inference_model


def _onnx():
    """The ``onnx`` module, or a one-line error saying how to install what export needs."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as error:
        raise RuntimeError(f'export needs the optional package {error.name}: pip install "nucleilib[export]"') from None
    return onnx


def export_onnx(out: str | Path, model_path: str | Path | None = None) -> dict[str, str]:
    """Write the U-Net of the checkpoint ``model_path`` (default: the shipped model) to ``out`` as ONNX.

    Input ``image``: float32 ``(N, 1, H, W)``, normalized as the metadata's ``normalization`` says (percentiles
    1 and 99.8 to 0 and 1 for the shipped model), H and W multiples of ``size_multiple`` (``2 ** depth``; pad
    first, by reflection as ``predict`` does, and crop the result). Output ``logits``: ``(N, heads, H, W)``; their
    sigmoid is the probability of each head. Written atomically; returns the metadata stored in the file.

    Examples
    --------
    >>> import tempfile
    >>> from nucleilib.checkpoint import save_checkpoint
    >>> from nucleilib.model import UNet
    >>> folder = Path(tempfile.mkdtemp())
    >>> checkpoint = save_checkpoint(folder / "tiny.pt", UNet(out_channels=2, base=2, depth=1))
    >>> metadata = export_onnx(folder / "tiny.onnx", checkpoint)
    >>> import onnx
    >>> stored = {prop.key: prop.value for prop in onnx.load(folder / "tiny.onnx").metadata_props}
    >>> stored == metadata, metadata["heads"], metadata["size_multiple"]
    (True, '["mask", "interior"]', '2')
    """
    onnx = _onnx()
    model, info = load_model(model_path)
    multiple = 2**model.depth
    blocks = [torch.export.Dim(name, min=1, max=4096) for name in ("height_blocks", "width_blocks")]
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096), 2: multiple * blocks[0], 3: multiple * blocks[1]},)
    example = torch.zeros(2, model.in_channels, 2 * multiple, 3 * multiple)  # unequal sizes: nothing specializes
    with warnings.catch_warnings(), contextlib.redirect_stdout(text_io.StringIO()):  # the exporter's progress talk
        warnings.simplefilter("ignore")
        program = torch.onnx.export(inference_model(model).to(memory_format=torch.contiguous_format), (example,),
                                    dynamo=True, input_names=["image"], output_names=["logits"],
                                    dynamic_shapes=shapes, optimize=True)
    metadata = {"normalization": json.dumps(info["normalization"]), "heads": json.dumps(info["heads"]),
                "size_multiple": str(multiple), "checkpoint_sha256": file_sha256(info["path"]),
                "training_command": str(info["provenance"].get("command", "")), "nucleilib_version": __version__}
    proto = program.model_proto  # a fresh copy at each access: change and save the same one
    onnx.helper.set_model_props(proto, metadata)
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    return metadata
