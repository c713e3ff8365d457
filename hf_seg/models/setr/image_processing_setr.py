# Copyright 2025 The hf_seg authors. Licensed under the Apache License, Version 2.0.
"""Image processor for SETR, faithful to mmsegmentation's test pipeline.

mmsegmentation evaluates SETR (and SegFormer / UperNet) as follows: load the image as 8-bit colour, rescale it
keeping its aspect ratio so that it fits inside `(long, short)` (`mmcv.imrescale`, OpenCV bilinear), normalise it
with the ImageNet mean/std, pad it bottom/right with 0 to a multiple of the patch size, run the model, crop the
padding off the logits, resize them bilinearly to the original image size and take the argmax.
`SetrImageProcessor` reproduces each of these steps so that converted checkpoints give the published numbers.

This file is shipped next to the weights as Hub remote code: it imports only the standard library, numpy, PIL,
torch and transformers.
"""

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType


class SetrImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    do_reduce_labels (`bool`, *optional*, defaults to `self.do_reduce_labels`):
        Apply mmsegmentation's `reduce_zero_label` to segmentation maps: 0 -> 255, k -> k - 1, 255 stays 255.
        Used for ADE20K, whose label 0 ("other") is not one of the 150 classes.
    size_divisor (`int`, *optional*, defaults to `self.size_divisor`):
        With `do_pad`, images and maps are padded (bottom/right) to a multiple of this value, the ViT patch size,
        as mmsegmentation's data preprocessor does. `None` or 1 pads only to the largest size in the batch.
    ignore_index (`int`, *optional*, defaults to `self.ignore_index`):
        The label value written into the padded area of segmentation maps (the loss ignores it).
    """

    do_reduce_labels: bool
    size_divisor: int | None
    ignore_index: int


_KEEP_RATIO_KEYS = ("shortest_edge", "longest_edge")
_SUPPORTED_RESAMPLE = {
    int(PILImageResampling.NEAREST): "nearest",
    int(PILImageResampling.BILINEAR): "bilinear",
    int(PILImageResampling.BICUBIC): "bicubic",
}
# PIL modes that are converted to RGB with PIL itself (colour spaces PIL knows how to map to RGB).
_PIL_COLOUR_SPACES = ("CMYK", "YCbCr", "HSV", "LAB")
_PIL_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def get_setr_output_size(height: int, width: int, size: SizeDict) -> tuple[int, int]:
    """
    The size an image of `(height, width)` is resized to.

    - `{"height": H, "width": W}`: a fixed size.
    - `{"shortest_edge": s, "longest_edge": L}` (either key may be left out): mmcv's keep-ratio rescale, the SETR /
      SegFormer test resize. `scale = min(L / long_side, s / short_side)`, each side becomes `int(side * scale + 0.5)`
      exactly as `mmcv.imrescale` computes it (a side never drops below 1 pixel).
    """
    if size.height is not None and size.width is not None:
        return int(size.height), int(size.width)
    shortest, longest = size.shortest_edge, size.longest_edge
    if shortest is None and longest is None:
        raise ValueError(
            "`size` must be {'height', 'width'} or {'shortest_edge', 'longest_edge'} (either of the two), "
            f"got {dict(size)}."
        )
    if shortest is not None and longest is not None and shortest > longest:
        raise ValueError(f"`size['shortest_edge']` ({shortest}) is larger than `size['longest_edge']` ({longest}).")
    scales = []
    if longest is not None:
        scales.append(longest / max(height, width))
    if shortest is not None:
        scales.append(shortest / min(height, width))
    scale = min(scales)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of every output index under OpenCV's INTER_NEAREST: `floor(dst * in / out)` in double precision."""
    inverse_scale = 1.0 / (out_size / in_size)  # written as OpenCV computes it, so rounding matches bit for bit
    indices = np.floor(np.arange(out_size, dtype=np.float64) * inverse_scale).astype(np.int64)
    return np.minimum(indices, in_size - 1)


def _describe(array) -> str:
    return f"shape {tuple(array.shape)}, dtype {array.dtype}"


def label_map_from_scores(scores: torch.Tensor) -> torch.Tensor:
    """`(num_labels, h, w)` logits -> `(h, w)` class ids: the argmax, or for one channel (a binary model, trained
    with a sigmoid loss) foreground 1 where the sigmoid exceeds 0.5, as `hf_seg.segment` decides it."""
    return scores.argmax(dim=0) if scores.shape[0] > 1 else (scores[0] > 0).long()


class SetrImageProcessor(PilBackend):
    r"""
    Constructs a SETR image processor (PIL / NumPy backend) that reproduces mmsegmentation's test pipeline.

    Steps, in order: input conversion to 8-bit-range RGB, `do_reduce_labels` on maps, resize (images like OpenCV
    `INTER_LINEAR`: half-pixel centres, no antialiasing; maps like `INTER_NEAREST`), rescale, normalize, then pad
    bottom/right to a multiple of `size_divisor` with 0 for images (after normalisation, as mmsegmentation does) and
    `ignore_index` for maps. Images of a batch that differ in size after resizing are all padded to the batch's
    largest height and width (rounded up to `size_divisor`) so that they stack; `post_process_semantic_segmentation`
    undoes this when given the original sizes.

    Input conversion (strict: anything else raises a `ValueError` naming the input's index in the batch):

    - PIL images: `1`, `L` (grey replicated), `LA` (alpha dropped), `P`/`PA` (through the palette), `RGB`, `RGBA`
      (alpha dropped, as `cv2.imread(IMREAD_COLOR)` does), `RGBX`, `RGBa`, `CMYK`/`YCbCr`/`HSV`/`LAB` (PIL's own
      conversion), `I;16*` (16-bit: `round(x / 257)`), `I` (32-bit: values must already lie in 0..255) and `F`
      (float rules below). EXIF orientation is not applied to PIL objects (it is for file paths).
    - NumPy arrays and torch tensors, RGB order, `(H, W)`, `(H, W, C)` or `(C, H, W)` with C in 1 (replicated),
      3 or 4 (alpha dropped). When the layout is ambiguous (e.g. `(3, 4, 3)`), NumPy arrays are read as
      channels-last and tensors as channels-first; pass `input_data_format` to decide. A 4-D input is a batch.
      `uint8` is used as is, `uint16` is 16-bit (`round(x / 257)`), other integer types must lie in 0..255.
      Floats must be finite and non-negative: values up to 1 are taken as already rescaled (multiplied by 255),
      values up to 255 are used as they are, larger values are refused. `bool`, complex, empty or 2-channel inputs
      are refused.
    - `do_convert_rgb=False` keeps 1- and 4-channel inputs as they are (for models with their own mean/std);
      every other rule still applies.

    Everything is brought to the 0..255 scale first, so `do_rescale` always means "divide by 255" and
    `do_rescale=False` with mean/std on the 0..255 scale (mmsegmentation's `123.675, ...`) works too.

    Segmentation maps: 2-D label maps as PIL `L`, `P` (the palette *indices* are the labels; the palette is never
    applied), `1`, `I;16`, `I`, `F`, or integer / integral-float / bool arrays and tensors of shape `(H, W)` or
    `(1, H, W)` (a 3-D array outside a list is a batch of maps). Negative or non-integral values, other modes or
    shapes, or a size different from the image's raise a `ValueError` naming the map's index.
    """

    valid_kwargs = SetrImageProcessorKwargs
    model_input_names = ["pixel_values"]

    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 512, "longest_edge": 2048}
    default_to_square = True
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_pad = True
    size_divisor = 16
    do_reduce_labels = False
    ignore_index = 255
    do_convert_rgb = True

    def __init__(self, **kwargs: Unpack[SetrImageProcessorKwargs]):
        super().__init__(**kwargs)

    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        **kwargs: Unpack[SetrImageProcessorKwargs],
    ) -> BatchFeature:
        r"""
        Preprocess an image or a batch of images, and optionally their segmentation maps.

        Args:
            images (`ImageInput`):
                A PIL image, NumPy array, torch tensor or file path, or a list of them (see the class docstring for
                the accepted modes, dtypes and shapes).
            segmentation_maps (`ImageInput`, *optional*):
                One label map per image, with the image's height and width.

        Returns:
            [`BatchFeature`]: `pixel_values` (float32, `(N, 3, H, W)` as tensors) and, with maps, `labels` (int64,
            `(N, H, W)`), both padded to the same size.
        """
        return super().preprocess(images, segmentation_maps, **kwargs)

    # ------------------------------------------------------------------------------------------------ input conversion

    def _flatten_inputs(self, inputs, is_map: bool) -> list:
        """A flat list of single images (or maps); a 4-D array (3-D for maps) outside a list is a batch."""
        what = "segmentation map" if is_map else "image"
        batch_ndim = 3 if is_map else 4
        if isinstance(inputs, (list, tuple)):
            if len(inputs) == 0:
                raise ValueError(f"Got an empty list of {what}s.")
            flat = []
            for index, item in enumerate(inputs):
                if isinstance(item, (list, tuple)):
                    raise ValueError(f"{what} {index}: nested lists are not supported; pass a flat list.")
                if isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == batch_ndim and item.shape[0] == 1:
                    item = item[0]  # a batch of one inside the list
                flat.append(item)
            return flat
        if isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == batch_ndim:
            if inputs.shape[0] == 0:
                raise ValueError(f"{what} 0: empty batch ({_describe(inputs)}).")
            return list(inputs)
        return [inputs]

    @staticmethod
    def _load_path(path: str, index: int, what: str) -> Image.Image:
        """Open a local file (or, for images, an http(s) URL) without changing its mode."""
        if what == "image" and path.startswith(("http://", "https://")):
            from transformers.image_utils import load_image

            return load_image(path)
        try:
            image = Image.open(path)
            image.load()
        except Exception as error:  # noqa: BLE001 - re-raised with the index
            raise ValueError(f"{what} {index}: cannot open {path!r} ({error}).") from error
        return ImageOps.exif_transpose(image) if what == "image" else image

    def _pil_image_to_array(self, image: Image.Image, index: int) -> np.ndarray:
        """HWC / HW array of a PIL image, with colour modes resolved; dtype rules are applied afterwards."""
        mode = image.mode
        if mode == "1":
            return np.asarray(image.convert("L"))
        if mode in ("L", "RGB", "I", "F"):
            return np.asarray(image)
        if mode in _PIL_16BIT_MODES:
            return np.asarray(image).astype(np.uint16)
        if mode == "LA":
            return np.asarray(image)[..., 0]
        if mode == "La":
            return np.asarray(image.convert("LA"))[..., 0]  # un-premultiply, then drop alpha
        if mode in ("P", "PA"):
            return np.asarray(image.convert("RGBA"))[..., :3]
        if mode == "RGBA":
            return np.asarray(image)
        if mode == "RGBa":
            return np.asarray(image.convert("RGBA"))
        if mode == "RGBX":
            return np.asarray(image)[..., :3]
        if mode in _PIL_COLOUR_SPACES:
            return np.asarray(image.convert("RGB"))
        raise ValueError(
            f"image {index}: unsupported PIL mode {mode!r}. Supported: 1, L, LA, La, P, PA, RGB, RGBA, RGBa, RGBX, "
            f"{', '.join(_PIL_COLOUR_SPACES)}, {', '.join(_PIL_16BIT_MODES)}, I, F."
        )

    @staticmethod
    def _array_from_tensor(tensor: torch.Tensor) -> np.ndarray:
        tensor = tensor.detach().cpu()
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()
        return tensor.numpy()

    @staticmethod
    def _check_dtype(array: np.ndarray, index: int, what: str, allow_bool: bool = False) -> None:
        kind = array.dtype.kind
        if kind == "b" and not allow_bool:
            raise ValueError(f"{what} {index}: boolean inputs are not images ({_describe(array)}).")
        if kind not in "uifb":
            raise ValueError(f"{what} {index}: unsupported dtype ({_describe(array)}); expected integers or floats.")

    def _image_values_to_255(self, array: np.ndarray, index: int) -> np.ndarray:
        """Bring pixel values to the 0..255 scale: uint8 as is, uint16 / 257, floats in [0, 1] times 255."""
        if array.dtype == np.uint8:
            return array
        if array.dtype == np.uint16:
            return np.rint(array / 257.0).astype(np.uint8)
        if array.dtype.kind in "iu":
            low, high = int(array.min()), int(array.max())
            if low < 0 or high > 255:
                raise ValueError(
                    f"image {index}: integer values must lie in 0..255 for {array.dtype} inputs, got {low}..{high} "
                    f"({_describe(array)}). Pass 16-bit data as uint16 (or a PIL 'I;16' image), or scale it to 8 bits."
                )
            return array.astype(np.uint8)
        # floating point
        array = array.astype(np.float32, copy=False)
        if not np.isfinite(array).all():
            raise ValueError(f"image {index}: contains NaN or infinite values ({_describe(array)}).")
        low, high = float(array.min()), float(array.max())
        if low < 0:
            raise ValueError(f"image {index}: float values must be >= 0, got a minimum of {low} ({_describe(array)}).")
        if high <= 1.0:
            return array * np.float32(255.0)
        if high <= 255.0:
            return array
        raise ValueError(
            f"image {index}: float values must lie in [0, 1] (already rescaled) or [0, 255], got a maximum of {high} "
            f"({_describe(array)})."
        )

    def _channel_axis(self, array: np.ndarray, index: int, from_torch: bool, input_data_format) -> str:
        if input_data_format is not None:
            fmt = ChannelDimension(input_data_format)
            if fmt == ChannelDimension.FIRST:
                return "first"
            if fmt == ChannelDimension.LAST:
                return "last"
            raise ValueError(f"image {index}: unsupported input_data_format {input_data_format!r}.")
        first_ok, last_ok = array.shape[0] in (1, 3, 4), array.shape[-1] in (1, 3, 4)
        if first_ok and last_ok:
            return "first" if from_torch else "last"
        if first_ok:
            return "first"
        if last_ok:
            return "last"
        raise ValueError(
            f"image {index}: cannot find a channel axis with 1, 3 or 4 channels ({_describe(array)}); "
            "2-channel and multispectral images are not supported."
        )

    def convert_image(self, image, index: int, do_convert_rgb: bool, input_data_format) -> np.ndarray:
        """One input image -> (C, H, W) array on the 0..255 scale (uint8, or float32 for float inputs), by the
        conversion rules of the class docstring; `index` names the input in error messages. Public so that the
        training transforms (`hf_seg.data`) apply exactly the same rules."""
        if isinstance(image, str):
            image = self._load_path(image, index, "image")
        from_torch = isinstance(image, torch.Tensor)
        if isinstance(image, Image.Image):
            array = self._pil_image_to_array(image, index)
            layout = "last"
        elif isinstance(image, (np.ndarray, torch.Tensor)):
            array = self._array_from_tensor(image) if from_torch else np.asarray(image)
            layout = None
        else:
            raise ValueError(
                f"image {index}: unsupported input type {type(image).__name__}; expected a PIL image, a NumPy array, "
                "a torch tensor or a file path."
            )
        self._check_dtype(array, index, "image")
        if array.ndim not in (2, 3):
            raise ValueError(f"image {index}: expected a 2-D or 3-D image, got {array.ndim}-D ({_describe(array)}).")
        if array.size == 0:
            raise ValueError(f"image {index}: empty image ({_describe(array)}).")

        if array.ndim == 2:
            array = array[None]
        else:
            if layout is None:
                layout = self._channel_axis(array, index, from_torch, input_data_format)
            if layout == "last":
                array = np.moveaxis(array, -1, 0)
        channels = array.shape[0]
        if channels not in (1, 3, 4):
            raise ValueError(
                f"image {index}: {channels} channels are not supported (expected 1, 3 or 4; {_describe(array)})."
            )
        if do_convert_rgb and channels == 4:
            array = array[:3]  # drop alpha without compositing, like cv2.imread(IMREAD_COLOR)
        array = self._image_values_to_255(np.ascontiguousarray(array), index)
        if do_convert_rgb and channels == 1:
            array = np.repeat(array, 3, axis=0)
        return array

    def convert_segmentation_map(self, segmentation_map, index: int) -> np.ndarray:
        """One label map -> (H, W) int64 array of non-negative labels (rules in the class docstring)."""
        what = "segmentation map"
        if isinstance(segmentation_map, str):
            segmentation_map = self._load_path(segmentation_map, index, what)
        if isinstance(segmentation_map, Image.Image):
            mode = segmentation_map.mode
            if mode in ("L", "P", "1", "I", "F"):
                array = np.asarray(segmentation_map)  # for P: the palette indices, never the colours
            elif mode in _PIL_16BIT_MODES:
                array = np.asarray(segmentation_map).astype(np.uint16)
            else:
                raise ValueError(
                    f"{what} {index}: PIL mode {mode!r} is not a label map; expected a single-channel image "
                    "(L, P, 1, I;16, I or F). Convert colour-coded maps to class indices first."
                )
        elif isinstance(segmentation_map, torch.Tensor):
            array = self._array_from_tensor(segmentation_map)
        elif isinstance(segmentation_map, np.ndarray):
            array = segmentation_map
        else:
            raise ValueError(
                f"{what} {index}: unsupported input type {type(segmentation_map).__name__}; expected a PIL image, "
                "a NumPy array, a torch tensor or a file path."
            )
        self._check_dtype(array, index, what, allow_bool=True)
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 2:
            raise ValueError(
                f"{what} {index}: expected a 2-D map of shape (H, W) or (1, H, W), got {_describe(array)}."
            )
        if array.size == 0:
            raise ValueError(f"{what} {index}: empty map ({_describe(array)}).")
        if array.dtype.kind == "f":
            if not np.isfinite(array).all() or not np.array_equal(array, np.floor(array)):
                raise ValueError(f"{what} {index}: float labels must be whole numbers ({_describe(array)}).")
        if array.dtype.kind != "b" and array.min() < 0:
            raise ValueError(
                f"{what} {index}: labels must be non-negative, got a minimum of {array.min()} ({_describe(array)})."
            )
        return array.astype(np.int64)

    def _prepare_images(self, images, do_convert_rgb, input_data_format) -> list[np.ndarray]:
        return [
            self.convert_image(image, index, do_convert_rgb is not False, input_data_format)
            for index, image in enumerate(self._flatten_inputs(images, is_map=False))
        ]

    def _prepare_segmentation_maps(self, segmentation_maps) -> list[np.ndarray]:
        return [
            self.convert_segmentation_map(segmentation_map, index)
            for index, segmentation_map in enumerate(self._flatten_inputs(segmentation_maps, is_map=True))
        ]

    def _prepare_image_like_inputs(
        self, images, *args, expected_ndims: int = 3, do_convert_rgb=None, input_data_format=None, **kwargs
    ) -> list[np.ndarray]:
        """Replaces the backend's conversion with the strict one above (`expected_ndims=2` selects label maps)."""
        if expected_ndims == 2:
            return self._prepare_segmentation_maps(images)
        return self._prepare_images(images, do_convert_rgb, input_data_format)

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, **kwargs) -> np.ndarray:
        """Convert a single image to a (C, H, W) array on the 0..255 scale."""
        return self.convert_image(image, 0, do_convert_rgb is not False, input_data_format)

    def _preprocess_image_like_inputs(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        return_tensors: str | TensorType | None = None,
        **kwargs,
    ) -> BatchFeature:
        prepared_images = self._prepare_images(images, do_convert_rgb, input_data_format)
        prepared_maps = None
        if segmentation_maps is not None:
            prepared_maps = self._prepare_segmentation_maps(segmentation_maps)
            if len(prepared_maps) != len(prepared_images):
                raise ValueError(
                    f"Got {len(prepared_images)} images but {len(prepared_maps)} segmentation maps (a 3-D array "
                    "outside a list is read as a batch of (H, W) maps)."
                )
            for index, (image, segmentation_map) in enumerate(zip(prepared_images, prepared_maps, strict=True)):
                if tuple(image.shape[-2:]) != tuple(segmentation_map.shape):
                    raise ValueError(
                        f"segmentation map {index}: size (height, width) {tuple(segmentation_map.shape)} differs from "
                        f"image {index}'s size {tuple(image.shape[-2:])}."
                    )
        return self._preprocess(
            prepared_images, segmentation_maps=prepared_maps, return_tensors=return_tensors, **kwargs
        )

    # ------------------------------------------------------------------------------------------------ transforms

    def reduce_label(self, label: np.ndarray) -> np.ndarray:
        """mmsegmentation's `reduce_zero_label`: 0 -> 255, k -> k - 1, and 255 stays 255."""
        return np.where((label == 0) | (label == 255), 255, label - 1)

    def resize(
        self, image: np.ndarray, size: SizeDict, resample: "PILImageResampling | int | None" = None, **kwargs
    ) -> np.ndarray:
        """
        Resize a (C, H, W) array like `mmcv.imresize` / `mmcv.imrescale` with the OpenCV backend.

        Bilinear (and bicubic) use half-pixel centres and no antialiasing, also when downscaling
        (`cv2.INTER_LINEAR`); integer images are rounded and clipped back to the 0..255 grid, which matches OpenCV's
        fixed-point result within one grey level. Nearest uses OpenCV's `INTER_NEAREST` index rule exactly.
        """
        height, width = image.shape[-2:]
        new_height, new_width = get_setr_output_size(height, width, size)
        if (new_height, new_width) == (height, width):
            return image
        mode = self._resample_mode(resample)
        if mode == "nearest":
            rows, cols = _nearest_indices(height, new_height), _nearest_indices(width, new_width)
            return image[..., rows[:, None], cols[None, :]]
        squeeze = image.ndim == 2
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        tensor = tensor[None, None] if squeeze else tensor[None]
        resized = F.interpolate(tensor, size=(new_height, new_width), mode=mode, align_corners=False, antialias=False)
        resized = resized[0, 0] if squeeze else resized[0]
        resized = resized.numpy()
        if image.dtype.kind in "iu":
            info = np.iinfo(image.dtype)
            resized = np.clip(np.rint(resized), info.min, info.max).astype(image.dtype)
        return resized

    @staticmethod
    def _resample_mode(resample) -> str:
        key = int(PILImageResampling.BILINEAR if resample is None else resample)
        if key not in _SUPPORTED_RESAMPLE:
            raise ValueError(
                f"resample={resample!r} is not supported; use PILImageResampling.BILINEAR (the mmsegmentation "
                "default), BICUBIC or NEAREST."
            )
        return _SUPPORTED_RESAMPLE[key]

    def _resize_label(self, label: np.ndarray, size: SizeDict) -> np.ndarray:
        return self.resize(label, size, PILImageResampling.NEAREST)

    @staticmethod
    def _padded_size(
        sizes: list[tuple[int, int]], do_pad: bool, size_divisor: int | None, pad_size: SizeDict | None
    ) -> tuple[int, int]:
        """The common (height, width) a batch of (resized) sizes is padded to."""
        height = max(h for h, _ in sizes)
        width = max(w for _, w in sizes)
        if not do_pad:
            return height, width
        if pad_size is not None and pad_size.height is not None and pad_size.width is not None:
            if pad_size.height < height or pad_size.width < width:
                raise ValueError(
                    f"pad_size ({pad_size.height}, {pad_size.width}) is smaller than the largest resized image "
                    f"({height}, {width})."
                )
            height, width = pad_size.height, pad_size.width
        if size_divisor is not None and size_divisor > 1:
            height = math.ceil(height / size_divisor) * size_divisor
            width = math.ceil(width / size_divisor) * size_divisor
        return height, width

    @staticmethod
    def _pad_to(array: np.ndarray, height: int, width: int, value) -> np.ndarray:
        pad_h, pad_w = height - array.shape[-2], width - array.shape[-1]
        if pad_h == 0 and pad_w == 0:
            return array
        pad_width = [(0, 0)] * (array.ndim - 2) + [(0, pad_h), (0, pad_w)]
        return np.pad(array, pad_width, mode="constant", constant_values=value)

    def _preprocess(
        self,
        images: list[np.ndarray],
        segmentation_maps: list[np.ndarray] | None = None,
        do_resize: bool = True,
        size: SizeDict | None = None,
        resample: "PILImageResampling | int | None" = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Iterable[float] | None = None,
        image_std: float | Iterable[float] | None = None,
        do_pad: bool = True,
        pad_size: SizeDict | None = None,
        size_divisor: int | None = None,
        do_reduce_labels: bool = False,
        ignore_index: int = 255,
        do_center_crop: bool | None = None,
        data_format: str | ChannelDimension | None = None,
        return_tensors: str | TensorType | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Resize, rescale, normalize and pad the converted images (and maps) in mmsegmentation's order."""
        if do_center_crop:
            raise ValueError("do_center_crop is not part of the SETR pipeline; it is not supported.")
        if data_format is not None and ChannelDimension(data_format) != ChannelDimension.FIRST:
            raise ValueError(f"Only channels-first output is supported, got data_format={data_format!r}.")
        if do_resize:
            self._resample_mode(resample)  # fail early on an unsupported filter

        pixel_values = []
        for image in images:
            if do_resize:
                image = self.resize(image, size, resample)
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            pixel_values.append(image.astype(np.float32, copy=False))

        labels = None
        if segmentation_maps is not None:
            labels = []
            for label in segmentation_maps:
                if do_reduce_labels:
                    label = self.reduce_label(label)
                if do_resize:
                    label = self._resize_label(label, size)
                labels.append(label.astype(np.int64, copy=False))

        sizes = [tuple(image.shape[-2:]) for image in pixel_values]
        if do_pad:
            height, width = self._padded_size(sizes, do_pad, size_divisor, pad_size)
            pixel_values = [self._pad_to(image, height, width, 0.0) for image in pixel_values]
            if labels is not None:
                labels = [self._pad_to(label, height, width, ignore_index) for label in labels]
        elif return_tensors is not None and len(set(sizes)) > 1:
            raise ValueError(
                f"The images have different sizes after resizing ({sorted(set(sizes))}) and do_pad=False, so they "
                "cannot be stacked into one tensor: set do_pad=True, use a fixed size, or return_tensors=None."
            )

        data = {"pixel_values": pixel_values}
        if labels is not None:
            data["labels"] = labels
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ------------------------------------------------------------------------------------------------ post-processing

    def post_process_semantic_segmentation(
        self, outputs, target_sizes: list[tuple[int, int]] | None = None, return_segmentation_scores: bool = False
    ) -> "list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]":
        """
        Turn the logits of a semantic-segmentation model into one label map per image.

        Without `target_sizes`, the argmax of the logits is returned at their own size (padding included).

        With `target_sizes`, these are the **original** `(height, width)` of the images, as the image-segmentation
        pipeline passes them, for the whole batch as it was preprocessed. As mmsegmentation does, for each image this:

        1. recomputes, from its original size and this processor's `do_resize` / `size`, the size the image had after
           resizing, and from the batch and `do_pad` / `size_divisor` / `pad_size` the padded input size;
        2. resizes the logits bilinearly to that padded input size when they are smaller (e.g. at 1/4, as SegFormer's),
           crops the padding (bottom/right) off,
        3. resizes the crop bilinearly (`align_corners=False`) to the original size and takes the argmax.

        The logits must cover the padded input; uses this processor's own settings (set them on the processor if
        preprocessing overrode them).

        Args:
            outputs: the model output (anything with `.logits` of shape `(N, num_labels, h, w)`) or the logits.
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor` of shape `(N, 2)`, *optional*):
                The original `(height, width)` of each image.
            return_segmentation_scores (`bool`, *optional*, defaults to `False`):
                Return [`SemanticSegmentationPostProcessorOutput`] items with `segmentation` and the resized
                `segmentation_scores` (float32 when the logits are half precision).

        Returns:
            `list[torch.Tensor]` (int64 label maps) or `list[SemanticSegmentationPostProcessorOutput]`.
        """
        logits = outputs.logits if hasattr(outputs, "logits") else outputs
        if not isinstance(logits, torch.Tensor) or logits.ndim != 4:
            raise ValueError("Expected logits as a tensor of shape (batch, num_labels, height, width).")

        if target_sizes is None:
            results = [
                SemanticSegmentationPostProcessorOutput(
                    data={"segmentation": label_map_from_scores(logits[i]), "segmentation_scores": logits[i]}
                )
                for i in range(logits.shape[0])
            ]
        else:
            if isinstance(target_sizes, torch.Tensor):
                target_sizes = target_sizes.tolist()
            if len(target_sizes) != logits.shape[0]:
                raise ValueError(
                    f"Make sure that you pass in as many target sizes ({len(target_sizes)}) as the batch dimension "
                    f"of the logits ({logits.shape[0]})."
                )
            results = self._crop_and_resize_logits(logits, [(int(h), int(w)) for h, w in target_sizes])

        if not return_segmentation_scores:
            return [item.segmentation for item in results]
        return results

    def _crop_and_resize_logits(
        self, logits: torch.Tensor, target_sizes: list[tuple[int, int]]
    ) -> list[SemanticSegmentationPostProcessorOutput]:
        for index, (height, width) in enumerate(target_sizes):
            if height <= 0 or width <= 0:
                raise ValueError(f"target size {index}: ({height}, {width}) is not a valid image size.")
        resized_sizes = [get_setr_output_size(h, w, self.size) if self.do_resize else (h, w) for h, w in target_sizes]
        padded_h, padded_w = self._padded_size(resized_sizes, self.do_pad, self.size_divisor, self.pad_size)
        logits_h, logits_w = logits.shape[-2:]
        ratio_h, ratio_w = logits_h / padded_h, logits_w / padded_w
        if abs(ratio_h - ratio_w) > 1.0 / padded_h + 1.0 / padded_w + 1e-9:
            raise ValueError(
                f"The logits ({logits_h}, {logits_w}) are not a scaled copy of the padded input ({padded_h}, "
                f"{padded_w}) that this processor computes from target_sizes {target_sizes}: pass the original image "
                "sizes of the whole batch as it was preprocessed, with the same processor settings."
            )
        if not logits.is_floating_point() or logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()

        # mmsegmentation's order: logits to the padded input size, padding cropped, then to the original size
        if (logits_h, logits_w) != (padded_h, padded_w):
            logits = F.interpolate(logits, size=(padded_h, padded_w), mode="bilinear", align_corners=False)
        results = []
        for index, ((resized_h, resized_w), target) in enumerate(zip(resized_sizes, target_sizes, strict=True)):
            region = logits[index : index + 1, :, :resized_h, :resized_w]
            scores = F.interpolate(region, size=target, mode="bilinear", align_corners=False)[0]
            results.append(
                SemanticSegmentationPostProcessorOutput(data={"segmentation": label_map_from_scores(scores),
                                                              "segmentation_scores": scores})
            )
        return results


__all__ = ["SetrImageProcessor", "SetrImageProcessorKwargs", "get_setr_output_size"]
