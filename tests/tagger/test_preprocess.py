"""The shared preprocessing: every image is made here with Pillow, nothing comes from disk or the network."""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tagger.errors import TaggerError
from tagger.preprocess import (
    MAX_ASPECT,
    MIN_SIDE,
    DecompressionBombError,
    DegenerateImageError,
    EmptyImageError,
    ImageDecodeError,
    ImageError,
    PreprocessConfig,
    PreprocessConfigError,
    UnsupportedFormatError,
    decode_image,
    denormalize,
    letterbox,
    normalize_uint8,
    preprocess,
    preprocess_image,
    to_tensor,
)
from tests.tagger.conftest import encode, png_header

CONFIG = PreprocessConfig()
RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


def close(actual: Any, expected: Any, tol: int = 3) -> bool:
    return bool(np.all(np.abs(np.asarray(actual, dtype=int) - np.asarray(expected, dtype=int)) <= tol))


def as_rgb(tensor: torch.Tensor, config: PreprocessConfig = CONFIG) -> np.ndarray:
    """The 0..255 picture behind a normalised tensor, (H, W, 3) ints."""
    return pixels(denormalize(tensor, config))


def normalised(colour: tuple[int, int, int], config: PreprocessConfig = CONFIG) -> torch.Tensor:
    return (torch.tensor(colour) / 255.0 - torch.tensor(config.mean)) / torch.tensor(config.std)


# --- orientation and colour modes -------------------------------------------------------------------------------


@pytest.mark.parametrize(("orientation", "red_at_top"), [(6, True), (8, False)])
def test_exif_orientation_is_applied(orientation: int, red_at_top: bool) -> None:
    # Stored wide (200x100) with a red block on the left; orientations 6 and 8 stand it upright.
    stored = Image.new("RGB", (200, 100), GREEN)
    stored.paste(RED, (0, 0, 50, 100))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)

    upright = decode_image(data, CONFIG)
    assert upright.size == (100, 200)
    top, bottom = pixels(upright)[10, 50], pixels(upright)[190, 50]
    assert close(top, RED if red_at_top else GREEN, 20)
    assert close(bottom, GREEN if red_at_top else RED, 20)

    picture = as_rgb(preprocess(data, CONFIG))  # tall: white bands left and right
    assert close(picture[:, :50], WHITE, 1) and close(picture[:, -50:], WHITE, 1)
    assert close(picture[5 if red_at_top else 218, 112], RED, 20)


def test_rgba_png_transparent_areas_become_pad_colour() -> None:
    img = Image.new("RGBA", (60, 60), (0, 0, 0, 0))  # transparent black: must not show as black
    img.paste((0, 0, 255, 255), (30, 0, 60, 30))
    img.paste((255, 0, 0, 128), (30, 30, 60, 60))  # half-transparent red over white -> pink
    out = pixels(decode_image(encode(img, "PNG"), CONFIG))
    assert close(out[:, :30], WHITE, 0)
    assert close(out[10, 45], BLUE, 0)
    assert close(out[45, 45], (255, 127, 127), 1)

    black_pad = PreprocessConfig(pad_colour=(0, 0, 0))
    assert close(pixels(decode_image(encode(img, "PNG"), black_pad))[:, :30], (0, 0, 0), 0)


def test_la_png_is_composited() -> None:
    img = Image.new("LA", (40, 40), (0, 0))
    img.paste((50, 255), (10, 0, 40, 40))
    out = pixels(decode_image(encode(img, "PNG"), CONFIG))
    assert close(out[5, 5], WHITE, 0) and close(out[5, 15], (50, 50, 50), 0)


def test_cmyk_jpeg_becomes_rgb() -> None:
    img = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # pure red in CMYK
    data = encode(img, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data, CONFIG)
    assert out.mode == "RGB"
    assert close(pixels(out)[32, 32], RED, 10)


def test_sixteen_bit_grey_png_scales_instead_of_clipping() -> None:
    ramp = np.tile(np.arange(256, dtype=np.uint16) * 257, (32, 1))  # 0, 257, ..., 65535
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = pixels(decode_image(data, CONFIG))
    assert np.array_equal(out[3, :, 0], np.arange(256))
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])

    mid_grey = encode(Image.fromarray(np.full((64, 64), 32896, dtype=np.uint16)), "PNG")
    tensor = preprocess(mid_grey, CONFIG)
    assert torch.allclose(tensor[:, 112, 112], normalised((128, 128, 128)), atol=1e-5)


def test_sixteen_bit_png_transparency_key() -> None:
    grey = np.full((40, 40), 40000, dtype=np.uint16)
    grey[:, :5] = 1000
    data = encode(Image.fromarray(grey), "PNG", transparency=1000)
    out = pixels(decode_image(data, CONFIG))
    assert close(out[5, 2], WHITE, 0) and close(out[5, 7], (156, 156, 156), 0)


def test_mode_i_maps_sixteen_bit_range() -> None:
    img = Image.fromarray(np.array([[0, 32896], [65535, 70000]], dtype=np.int32))
    assert img.mode == "I"
    tensor = preprocess_image(img, PreprocessConfig(image_size=2))
    assert np.array_equal(as_rgb(tensor, PreprocessConfig(image_size=2))[..., 0], [[0, 128], [255, 255]])


@pytest.mark.parametrize(("mode", "fmt"), [("L", "PNG"), ("L", "JPEG"), ("1", "PNG"), ("L", "TIFF"), ("RGB", "BMP")])
def test_grey_and_simple_modes_become_rgb(mode: str, fmt: str) -> None:
    img = Image.new(mode, (64, 32), 0)
    img.paste(255 if mode in ("L", "1") else WHITE, (32, 0, 64, 32))
    out = decode_image(encode(img, fmt), CONFIG)
    assert out.mode == "RGB" and out.size == (64, 32)
    assert close(pixels(out)[10, 5], (0, 0, 0), 8) and close(pixels(out)[10, 35], WHITE, 8)


def test_palette_png_with_transparency() -> None:
    img = Image.new("P", (40, 32), 0)
    img.putpalette([*RED, *GREEN])
    img.paste(1, (20, 0, 40, 32))
    data = encode(img, "PNG", transparency=0)  # index 0 (red) is the transparent one
    out = pixels(decode_image(data, CONFIG))
    assert close(out[10, 5], WHITE, 0) and close(out[10, 30], GREEN, 0)


def test_palette_gif_without_transparency_keeps_colours() -> None:
    img = Image.new("P", (32, 32), 1)
    img.putpalette([*RED, *BLUE])
    assert close(pixels(decode_image(encode(img, "GIF"), CONFIG))[5, 5], BLUE, 0)


@pytest.mark.parametrize(("fmt", "params"), [("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True})])
def test_animations_use_their_first_frame(fmt: str, params: dict[str, Any]) -> None:
    first, second = Image.new("RGB", (32, 32), RED), Image.new("RGB", (32, 32), BLUE)
    data = encode(first, fmt, save_all=True, append_images=[second], duration=100, loop=0, **params)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    assert close(pixels(decode_image(data, CONFIG))[16, 16], RED, 0)


def test_webp_lossy_and_transparent() -> None:
    lossy = encode(Image.new("RGB", (64, 48), (200, 30, 60)), "WEBP", quality=90)
    out = decode_image(lossy, CONFIG)
    assert out.size == (64, 48) and close(pixels(out)[24, 32], (200, 30, 60), 6)

    rgba = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (32, 0, 64, 48))
    flat = pixels(decode_image(encode(rgba, "WEBP", lossless=True), CONFIG))
    assert close(flat[24, 10], WHITE, 0) and close(flat[24, 50], BLUE, 0)


def test_multi_picture_jpeg_counts_as_jpeg() -> None:
    data = encode(Image.new("RGB", (64, 48), RED), "MPO", save_all=True, append_images=[Image.new("RGB", (64, 48))])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert close(pixels(decode_image(data, PreprocessConfig(allowed_formats=("JPEG",))))[20, 20], RED, 4)


# --- letterboxing --------------------------------------------------------------------------------------------------


def bordered(width: int, height: int) -> Image.Image:
    """Blue, with an 8 px red frame: if anything is cropped, part of the frame disappears."""
    img = Image.new("RGB", (width, height), RED)
    img.paste(BLUE, (8, 8, width - 8, height - 8))
    return img


def test_wide_image_gets_white_bands_top_and_bottom() -> None:
    tensor = preprocess(encode(bordered(800, 200), "PNG"), CONFIG)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32 and tensor.is_contiguous()
    assert torch.allclose(tensor[:, 0, 0], normalised(WHITE), atol=1e-5)
    picture = as_rgb(tensor)
    # 800x200 -> 224x56, centred: rows 84..139 hold the image
    assert close(picture[:84], WHITE, 0) and close(picture[140:], WHITE, 0)
    for row, col in [(84, 112), (139, 112), (112, 0), (112, 223)]:  # all four edges of the frame survive
        assert picture[row, col, 0] > 150 and picture[row, col, 2] < 120, (row, col, picture[row, col])
    assert close(picture[112, 112], BLUE, 3)


def test_tall_image_gets_white_bands_left_and_right() -> None:
    picture = as_rgb(preprocess(encode(bordered(200, 800), "PNG"), CONFIG))
    assert close(picture[:, :84], WHITE, 0) and close(picture[:, 140:], WHITE, 0)
    for row, col in [(0, 112), (223, 112), (112, 84), (112, 139)]:
        assert picture[row, col, 0] > 150 and picture[row, col, 2] < 120, (row, col, picture[row, col])


@pytest.mark.parametrize("size", [(3000, 2), (2, 3000), (1, 1), (10, 5), (224, 224), (225, 223)])
def test_extreme_and_small_sizes(size: tuple[int, int]) -> None:
    img = Image.new("RGB", size, BLUE)
    boxed = letterbox(img, 224, WHITE)
    assert boxed.size == (224, 224) and boxed.mode == "RGB"
    scale = 224 / max(size)
    width, height = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
    assert close(pixels(boxed)[(224 - height) // 2 + height // 2, (224 - width) // 2 + width // 2], BLUE, 3)
    if min(size) < MIN_SIDE or max(size) > MAX_ASPECT * min(size):  # letterbox takes them; decoding refuses them
        with pytest.raises(DegenerateImageError):
            preprocess(encode(img, "PNG"), CONFIG)
    else:
        assert preprocess(encode(img, "PNG"), CONFIG).shape == (3, 224, 224)


def test_letterbox_accepts_other_modes_and_custom_pad() -> None:
    boxed = letterbox(Image.new("RGBA", (100, 50), (0, 0, 0, 0)), 64, (10, 20, 30), resample="lanczos")
    assert boxed.mode == "RGB" and close(pixels(boxed), (10, 20, 30), 0)


# --- hostile and broken input ----------------------------------------------------------------------------------------


def test_pixel_limit_checked_before_decoding(loads: list[tuple[int, int]]) -> None:
    data = encode(Image.new("RGB", (3000, 2000), BLUE), "PNG")
    with pytest.raises(DecompressionBombError) as excinfo:
        decode_image(data, PreprocessConfig(max_pixels=1_000_000))
    assert excinfo.value.reason == "decompression_bomb" and "6,000,000" in str(excinfo.value)
    assert loads == []
    assert decode_image(data, PreprocessConfig(max_pixels=6_000_000)).size == (3000, 2000)


def test_bomb_header_is_refused_without_decoding(loads: list[tuple[int, int]]) -> None:
    # 8000x6000 is under Pillow's own limit; ours (40 M) refuses it. Had the pixels been decoded, the
    # empty IDAT would have failed with decode_failed instead.
    with pytest.raises(DecompressionBombError):
        decode_image(png_header(8000, 6000), CONFIG)
    assert loads == []


def test_pillow_own_bomb_error_is_converted() -> None:
    with pytest.raises(DecompressionBombError) as excinfo:
        decode_image(png_header(50_000, 50_000), CONFIG)
    assert isinstance(excinfo.value.__cause__, Image.DecompressionBombError)


def test_pillow_bomb_warning_as_error_is_converted() -> None:
    header = png_header(10_000, 10_000)  # between Pillow's warning and error thresholds
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(DecompressionBombError):
        decode_image(header, CONFIG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DecompressionBombError) as excinfo:
            decode_image(header, CONFIG)
    assert isinstance(excinfo.value.__cause__, Image.DecompressionBombWarning)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", EmptyImageError),
        (b"just some text\nwith two lines\n", ImageError),
        (np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes(), ImageError),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", ImageError),
        (b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>", ImageError),
    ],
    ids=["empty", "text", "random", "pdf", "svg"],
)
def test_not_an_image(data: bytes, error: type[ImageError]) -> None:
    with pytest.raises(error) as excinfo:
        preprocess(data, CONFIG)
    assert type(excinfo.value) is error and excinfo.value.reason == "not_an_image"
    assert isinstance(excinfo.value, TaggerError)


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "PCX", "QOI"])
def test_disallowed_formats_are_refused(fmt: str) -> None:
    with pytest.raises(UnsupportedFormatError) as excinfo:
        decode_image(encode(Image.new("RGB", (32, 32), RED), fmt), CONFIG)
    assert excinfo.value.reason == "unsupported_format" and fmt in str(excinfo.value)


def test_tga_has_no_magic_but_is_still_refused() -> None:
    # TGA has no signature; Pillow's CUR check happens to match its first bytes.
    with pytest.raises(ImageError):
        decode_image(encode(Image.new("RGB", (32, 32), RED), "TGA"), CONFIG)


def test_allowlist_follows_the_bytes_not_the_name() -> None:
    png = encode(Image.new("RGB", (32, 32), RED), "PNG")
    with pytest.raises(UnsupportedFormatError, match="PNG"):
        decode_image(png, PreprocessConfig(allowed_formats=("JPEG",)))
    bmp = encode(Image.new("RGB", (32, 32), RED), "BMP")
    with pytest.raises(UnsupportedFormatError, match="BMP"):
        decode_image(bmp, PreprocessConfig(allowed_formats=("jpeg", "png")))


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's TIFF reader warns on a cut IFD
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_truncated_images_fail_to_decode(fmt: str) -> None:
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = encode(img, fmt)
    for cut in (len(data) // 2, 30):
        with pytest.raises(ImageDecodeError) as excinfo:
            decode_image(data[:cut], CONFIG)
        assert excinfo.value.reason == "decode_failed" and excinfo.value.__cause__ is not None


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's TIFF reader warns on some mutations
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_corrupted_bytes_never_leak_pillow_errors(fmt: str) -> None:
    rng = np.random.default_rng(11)
    data = bytearray(encode(Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)), fmt))
    for _ in range(60):
        broken = bytearray(data)
        for position in rng.integers(0, len(broken), 4):
            broken[position] = int(rng.integers(0, 256))
        try:
            tensor = preprocess(bytes(broken), CONFIG)
        except ImageError:
            continue
        assert tensor.shape == (3, 224, 224)


# --- JPEG draft, tensors, determinism -------------------------------------------------------------------------------


def test_large_jpeg_decodes_at_reduced_size(loads: list[tuple[int, int]]) -> None:
    data = encode(bordered(4000, 3000), "JPEG", quality=85)
    decoded = decode_image(data, CONFIG)
    assert decoded.size == (500, 375)  # 1/8 scale; the longer side stays >= 2 x 224
    assert set(loads) == {(500, 375)}  # never decoded at full size
    tensor = preprocess(data, CONFIG)
    assert tensor.shape == (3, 224, 224)
    picture = as_rgb(tensor)
    assert close(picture[:27], WHITE, 0) and close(picture[112, 112], BLUE, 6)


def test_draft_keeps_enough_pixels_for_thin_images() -> None:
    decoded = decode_image(encode(Image.new("RGB", (8000, 1000), BLUE), "JPEG"), CONFIG)
    assert decoded.size[0] >= 2 * CONFIG.image_size and decoded.size[0] < 8000


def test_same_bytes_same_tensor() -> None:
    rng = np.random.default_rng(5)
    data = encode(Image.fromarray(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)), "JPEG")
    assert torch.equal(preprocess(data, CONFIG), preprocess(data, CONFIG))


def test_denormalize_round_trip_and_uint8_path() -> None:
    rng = np.random.default_rng(9)
    array = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    img = Image.fromarray(array)
    tensor = preprocess_image(img, CONFIG)
    assert np.array_equal(as_rgb(tensor), array)
    assert np.array_equal(pixels(denormalize(tensor.unsqueeze(0), CONFIG)), array)
    uint8 = torch.from_numpy(array).permute(2, 0, 1)
    assert torch.allclose(normalize_uint8(uint8, CONFIG), tensor, atol=1e-6)
    assert torch.equal(to_tensor(img, CONFIG), tensor)
    assert normalize_uint8(uint8.unsqueeze(0).repeat(2, 1, 1, 1), CONFIG).shape == (2, 3, 224, 224)
    with pytest.raises(ValueError, match="uint8"):
        normalize_uint8(tensor, CONFIG)
    with pytest.raises(ValueError, match="3, H, W"):
        denormalize(tensor[0], CONFIG)


# --- configuration ---------------------------------------------------------------------------------------------------


def test_config_json_round_trip() -> None:
    config = PreprocessConfig(image_size=256, pad_colour=(250, 250, 250), allowed_formats=("jpeg", "PNG"))
    assert config.allowed_formats == ("JPEG", "PNG")
    restored = PreprocessConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config and hash(restored) == hash(config)
    assert isinstance(restored.mean, tuple) and isinstance(restored.pad_colour, tuple)
    assert PreprocessConfig.from_dict(PreprocessConfig().to_dict()) == PreprocessConfig()


def test_config_rejects_unknown_and_missing_keys() -> None:
    with pytest.raises(PreprocessConfigError, match="unknown keys \\['crop'\\]"):
        PreprocessConfig.from_dict({**CONFIG.to_dict(), "crop": True})
    partial = CONFIG.to_dict()
    del partial["std"]
    with pytest.raises(PreprocessConfigError, match="missing keys \\['std'\\]"):
        PreprocessConfig.from_dict(partial)
    with pytest.raises(PreprocessConfigError, match="JSON object"):
        PreprocessConfig.from_dict([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("image_size", 0),
        ("image_size", True),
        ("image_size", "224"),
        ("mean", [0.5, 0.5]),
        ("mean", [0.5, 0.5, float("nan")]),
        ("std", [0.2, 0.0, 0.2]),
        ("pad_colour", [256, 0, 0]),
        ("pad_colour", [1.5, 0, 0]),
        ("pad_colour", "white"),
        ("max_pixels", -1),
        ("allowed_formats", []),
        ("allowed_formats", ["JPEG", "NOPE"]),
        ("allowed_formats", "JPEG"),
        ("resample", "cubic"),
    ],
)
def test_config_rejects_bad_values(key: str, value: object) -> None:
    with pytest.raises(PreprocessConfigError, match=key):
        PreprocessConfig.from_dict({**CONFIG.to_dict(), key: value})


def test_errors_have_stable_reasons() -> None:
    reasons: dict[type[ImageError], str] = {
        ImageError: "not_an_image",
        EmptyImageError: "not_an_image",
        UnsupportedFormatError: "unsupported_format",
        DecompressionBombError: "decompression_bomb",
        ImageDecodeError: "decode_failed",
    }
    for error, reason in reasons.items():
        assert error.reason == reason and issubclass(error, TaggerError)
    assert issubclass(PreprocessConfigError, TaggerError)
