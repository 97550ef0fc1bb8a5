"""Turn one user-supplied image (path, PIL image or numpy array) into an RGB uint8 array.

This mirrors what transformers 4.57.6's slow `Qwen2VLImageProcessor` does before resizing, so
that every input kind yields the same pixels as the reference:

* paths: `PIL.Image.open` -> EXIF orientation applied -> `convert("RGB")` (`load_image`).
* PIL images: `convert("RGB")` unless already RGB (`convert_to_rgb`). Alpha is DROPPED, not
  composited; I;16 values above 255 clip to 255; P/CMYK/LA/1 use PIL's own conversions.
* numpy arrays are NOT colour-converted (the reference leaves them alone), so they must already
  have 3 channels, HWC or CHW. Non-uint8 arrays follow the reference's PIL round trip:
  integer-valued data in [0, 255] is cast to uint8; floats in [0, 1] are scaled by 255 and
  truncated to uint8, then divided by 255 again after the resize (and rescaled a second time
  by the processor, exactly like the reference does; a warning says so).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageOps

# What callers may pass as one image.
ImageInput = str | os.PathLike | PIL.Image.Image | np.ndarray


@dataclass
class RGBImage:
    """An image ready for resizing.

    Attributes:
        pixels: uint8[H, W, 3].
        unit_range: True when the input was a float array in [0, 1]; the reference then
            divides the resized uint8 pixels by 255 before its own rescale (see module doc).
    """

    pixels: np.ndarray
    unit_range: bool = False


def describe(image: object, index: int, kind: str = "image") -> str:
    """A short name for error messages: `image 3 ('/path/x.png')` or `image 3 (PIL RGBA 4x5)`."""
    if isinstance(image, (str, os.PathLike)):
        return f"{kind} {index} ({os.fspath(image)!r})"
    if isinstance(image, PIL.Image.Image):
        return f"{kind} {index} (PIL {image.mode} {image.width}x{image.height})"
    if isinstance(image, np.ndarray):
        return f"{kind} {index} (array {image.dtype} {tuple(image.shape)})"
    return f"{kind} {index} ({type(image).__name__})"


def open_image_file(path: str | os.PathLike, name: str) -> PIL.Image.Image:
    """Open and fully decode an image file, applying EXIF orientation; ValueError on failure."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{name}: file not found")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{name}: file is empty (0 bytes)")
    try:
        with PIL.Image.open(path) as image:
            # load() inside the try: a truncated file only fails when the pixels are decoded.
            image.load()
            image = PIL.ImageOps.exif_transpose(image)
            return image.convert("RGB")
    except PIL.Image.DecompressionBombError as err:
        raise ValueError(f"{name}: image is too large to decode safely ({err})") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        # PIL raises UnidentifiedImageError (an OSError) for unknown formats and OSError /
        # SyntaxError / EOFError for truncated or corrupt data, depending on the codec.
        raise ValueError(f"{name}: cannot read image file ({type(err).__name__}: {err})") from err


def _pil_to_rgb(image: PIL.Image.Image, name: str) -> np.ndarray:
    try:
        if image.mode != "RGB":
            image = image.convert("RGB")
        pixels = np.asarray(image)
    except (OSError, SyntaxError, EOFError) as err:
        raise ValueError(f"{name}: cannot decode image data ({type(err).__name__}: {err})") from err
    except ValueError as err:
        raise ValueError(f"{name}: cannot convert PIL mode {image.mode!r} to RGB ({err})") from err
    return pixels


def _array_to_rgb(array: np.ndarray, name: str) -> RGBImage:
    if array.ndim != 3:
        raise ValueError(
            f"{name}: numpy images must be HxWx3 or 3xHxW (got {array.ndim} dims); "
            "pass a PIL image to get grayscale/alpha conversion"
        )
    # Same channel inference as the reference (`infer_channel_dimension_format`): channels
    # first wins when both ends could be channels. 1-channel arrays fail later in the
    # reference (3-value mean on 1 channel), so we reject them here with a clearer message.
    if array.shape[0] == 3:
        array = array.transpose(1, 2, 0)
    elif array.shape[2] != 3:
        raise ValueError(
            f"{name}: numpy images must have 3 channels (HWC or CHW), got shape {array.shape}; "
            "convert it to RGB first (e.g. PIL.Image.fromarray(a).convert('RGB'))"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: image has zero size {array.shape[:2]}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"{name}: unsupported array dtype {array.dtype}")

    if array.dtype == np.uint8:
        return RGBImage(np.ascontiguousarray(array))
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: pixel values contain NaN or infinity")
    # Reference `_rescale_for_pil_conversion`, in the same order of checks.
    if np.allclose(array, array.astype(int)):
        if np.all(array >= 0) and np.all(array <= 255):
            return RGBImage(np.ascontiguousarray(array.astype(np.uint8)))
        raise ValueError(
            f"{name}: integer pixel values must be in [0, 255], got [{array.min()}, {array.max()}]"
        )
    if np.all(array >= 0) and np.all(array <= 1):
        warnings.warn(
            f"{name}: float pixels in [0, 1] are rescaled twice (like transformers does); "
            "pass uint8 or 0..255 values to avoid it",
            stacklevel=3,
        )
        # float64 * 255 -> float32 -> truncating uint8 cast: the reference's `rescale(x, 255)`
        # followed by `astype(uint8)`.
        scaled = (array.astype(np.float64) * 255).astype(np.float32).astype(np.uint8)
        return RGBImage(np.ascontiguousarray(scaled), unit_range=True)
    raise ValueError(
        f"{name}: float pixel values must be in [0, 1] or integer-valued in [0, 255], "
        f"got [{array.min()}, {array.max()}]"
    )


def to_rgb_image(image: object, index: int, kind: str = "image") -> RGBImage:
    """Convert one input to an `RGBImage`; ValueError naming `kind index (...)` on bad input."""
    name = describe(image, index, kind)
    if isinstance(image, (str, os.PathLike)):
        pixels = _pil_to_rgb(open_image_file(image, name), name)
    elif isinstance(image, PIL.Image.Image):
        pixels = _pil_to_rgb(image, name)
    elif isinstance(image, np.ndarray):
        return _array_to_rgb(image, name)
    else:
        raise ValueError(  # noqa: TRY004 - bad input is a ValueError by contract
            f"{name}: unsupported image type {type(image).__name__}; expected a path, PIL.Image.Image or numpy.ndarray"
        )
    if pixels.ndim != 3 or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(f"{name}: image has zero size {pixels.shape[:2]}")
    return RGBImage(pixels)
