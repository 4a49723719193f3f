"""ClickMe human saliency data (the Harmonization validation tfrecords), read without TensorFlow.

A TFRecord file is a sequence of records ``uint64 length | uint32 masked_crc32c(length) | data |
uint32 masked_crc32c(data)`` (little-endian); each ClickMe record's data is a serialised ``tf.train.Example`` with
the features ``image`` (bytes: a 256x256 RGB JPEG), ``heatmap`` (bytes: a 256x256 grey JPEG of click counts) and
``label`` (int64: the ImageNet class). Both formats are small enough to parse here: `read_tfrecord` does the
framing, `parse_example` the protobuf wire format (varints and length-delimited fields).

Preprocessing is the reference loader's (Harmonization's `parse_clickme_prototype`, used by the authors):

- image: float32, bilinear resize to 224 x 224 (TensorFlow's `tf.image.resize`: half-pixel centres, no antialias);
- heatmap: float32, bilinear resize to 64 x 64, Gaussian blur (10 x 10, sigma 10, normalised, TensorFlow 'SAME'
  zero padding: 4 before, 5 after), bilinear resize to 224 x 224;
- label: the int64 class index.

JPEGs are decoded by Pillow; TensorFlow's decoder may round a few pixels differently (its default DCT differs).
"""
from __future__ import annotations

import functools
import io
import math
import struct
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ClickMe", "read_tfrecord", "tfrecord_offsets", "parse_example", "crc32c", "masked_crc32c",
    "preprocess_clickme", "clickme_blur_kernel", "fraction_count", "CLICKME_SIZE", "HEATMAP_BLUR_SIZE",
]

CLICKME_SIZE = 224        # image and heatmap side after preprocessing
HEATMAP_BLUR_SIZE = 64    # the heatmap is blurred at this side
BLUR_KERNEL_SIZE = 10
BLUR_SIGMA = 10.0


# ------------------------------------------------------------------------------------------------ TFRecord framing

def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli polynomial, reflected
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


_CHUNK = 64  # bytes per lane of the vectorised CRC


@functools.lru_cache(maxsize=None)
def _zeros_operator(nbytes: int) -> tuple[list[int], ...]:
    """The CRC register after `nbytes` zero bytes, as 4 byte-lane tables: it is linear in the register (GF(2))."""
    table = np.array(_CRC_TABLE, dtype=np.uint32)
    regs = (np.arange(256, dtype=np.uint32)[None, :] << (8 * np.arange(4, dtype=np.uint32)[:, None])).ravel()
    for _ in range(nbytes):
        regs = table[regs & 0xFF] ^ (regs >> 8)
    return tuple(regs.reshape(4, 256).tolist())


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, as TFRecord uses.

    Pure Python byte loops run at ~1 MB/s, too slow for the ClickMe shards; here the data is cut into 64-byte
    lanes processed side by side with numpy, and the lane registers are folded together with the (linear)
    "64 zero bytes" operator, which gives the same CRC at tens of MB/s.
    """
    table = _CRC_TABLE
    crc = 0xFFFFFFFF
    lanes = len(data) // _CHUNK
    done = 0
    if lanes >= 2:
        block = np.frombuffer(data, dtype=np.uint8, count=lanes * _CHUNK).reshape(lanes, _CHUNK)
        np_table = np.array(table, dtype=np.uint32)
        regs = np.zeros(lanes, dtype=np.uint32)
        regs[0] = crc
        for col in range(_CHUNK):
            regs = np_table[(regs ^ block[:, col]) & 0xFF] ^ (regs >> 8)
        o0, o1, o2, o3 = _zeros_operator(_CHUNK)
        crc = 0
        for r in regs.tolist():
            crc = o0[crc & 0xFF] ^ o1[(crc >> 8) & 0xFF] ^ o2[(crc >> 16) & 0xFF] ^ o3[crc >> 24] ^ r
        done = lanes * _CHUNK
    for byte in data[done:]:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits and add 0xa282ead8."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_exact(f, n: int, path, offset: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"{path}: truncated TFRecord at byte {offset}: expected {n} bytes of {what}, "
                         f"got {len(data)}; the file is incomplete or not a TFRecord file")
    return data


def _read_header(f, path, offset: int) -> int | None:
    header = f.read(12)
    if not header:
        return None
    if len(header) != 12:
        raise ValueError(f"{path}: truncated TFRecord at byte {offset}: expected a 12-byte record header, "
                         f"got {len(header)}; the file is incomplete or not a TFRecord file")
    length, length_crc = struct.unpack("<QI", header)
    if masked_crc32c(header[:8]) != length_crc:
        raise ValueError(f"{path}: bad TFRecord length checksum at byte {offset}; the file is corrupt or not a "
                         f"TFRecord file")
    return length


def tfrecord_offsets(path: Union[str, Path]) -> list[int]:
    """Byte offsets of every record of a TFRecord file (headers checked, data skipped)."""
    offsets = []
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        offset = 0
        while (length := _read_header(f, path, offset)) is not None:
            end = offset + 12 + length + 4
            if end > size:
                raise ValueError(f"{path}: truncated TFRecord at byte {offset}: the record claims {length} bytes, "
                                 f"the file ends {size - offset - 12} bytes later")
            offsets.append(offset)
            f.seek(end)
            offset = end
    return offsets


def _read_record_at(f, path, offset: int, verify: bool) -> bytes:
    f.seek(offset)
    length = _read_header(f, path, offset)
    if length is None:
        raise ValueError(f"{path}: no TFRecord at byte {offset}")
    data = _read_exact(f, length, path, offset, "record data")
    (data_crc,) = struct.unpack("<I", _read_exact(f, 4, path, offset, "data checksum"))
    if verify and masked_crc32c(data) != data_crc:
        raise ValueError(f"{path}: bad TFRecord data checksum in the record at byte {offset}; the file is corrupt")
    return data


def read_tfrecord(path: Union[str, Path], verify: bool = True) -> Iterator[bytes]:
    """Yield the data of every record of a TFRecord file, checking both checksums (data checksum: if `verify`)."""
    with open(path, "rb") as f:
        offset = 0
        while (length := _read_header(f, path, offset)) is not None:
            data = _read_exact(f, length, path, offset, "record data")
            (data_crc,) = struct.unpack("<I", _read_exact(f, 4, path, offset, "data checksum"))
            if verify and masked_crc32c(data) != data_crc:
                raise ValueError(f"{path}: bad TFRecord data checksum in the record at byte {offset}; "
                                 f"the file is corrupt")
            yield data
            offset += 12 + length + 4


# ------------------------------------------------------------------------------------ tf.train.Example protobuf

class _ProtoError(ValueError):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _ProtoError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _ProtoError("varint longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int, Union[int, bytes]]]:
    """(field number, wire type, value) of each field of a serialised message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise _ProtoError("truncated 64-bit field")
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise _ProtoError("length-delimited field runs past the end of the message")
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            if pos + 4 > len(buf):
                raise _ProtoError("truncated 32-bit field")
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise _ProtoError(f"unsupported wire type {wire}")
        yield number, wire, value


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_feature(buf: bytes) -> Union[list[bytes], list[float], list[int]]:
    # Feature: oneof {BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3}; each list is
    # `repeated ... value = 1`, the numeric ones packed (wire type 2) or, as protobuf allows, one field per value.
    values: list = []
    for number, _, body in _fields(buf):
        if number not in (1, 2, 3) or not isinstance(body, bytes):
            continue
        values = []
        for inner_number, wire, v in _fields(body):
            if inner_number != 1:
                continue
            if number == 1 and wire == 2:
                values.append(bytes(v))
            elif number == 2 and wire == 5:
                values.append(struct.unpack("<f", v)[0])
            elif number == 2 and wire == 2:
                if len(v) % 4:
                    raise _ProtoError("packed float list of a length that is not a multiple of 4")
                values.extend(struct.unpack(f"<{len(v) // 4}f", v))
            elif number == 3 and wire == 0:
                values.append(_int64(v))
            elif number == 3 and wire == 2:
                pos = 0
                while pos < len(v):
                    item, pos = _varint(v, pos)
                    values.append(_int64(item))
            else:
                raise _ProtoError(f"feature list field {number} has wire type {wire}")
    return values


def parse_example(data: bytes) -> dict[str, list]:
    """Features of a serialised `tf.train.Example`: name -> list of bytes, floats or ints."""
    features: dict[str, list] = {}
    try:
        for number, _, body in _fields(data):             # Example.features = 1
            if number != 1 or not isinstance(body, bytes):
                continue
            for entry_number, _, entry in _fields(body):  # Features.feature = 1: map<string, Feature> entries
                if entry_number != 1 or not isinstance(entry, bytes):
                    continue
                key, value = None, b""
                for n, _, v in _fields(entry):
                    if n == 1 and isinstance(v, bytes):
                        key = v.decode("utf-8")
                    elif n == 2 and isinstance(v, bytes):
                        value = v
                if key is not None:
                    features[key] = _parse_feature(value)
    except (_ProtoError, UnicodeDecodeError) as err:
        raise ValueError(f"not a tf.train.Example: {err}") from None
    return features


# ----------------------------------------------------------------------------------------- preprocessing

def clickme_blur_kernel(size: int = BLUR_KERNEL_SIZE, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """The reference's Gaussian (size x size), normalised to sum 1.

    Its grid is x = -(size-1)//2 ... (size-1)//2 along columns and y = (size-1)//2 ... down along rows with
    Python's floor division, so for the even size 10 the peak sits at row 4, column 5 (a half-pixel offset).
    """
    x = torch.arange(-(size - 1) // 2, (size - 1) // 2 + 1, dtype=torch.float64)
    y = torch.arange((size - 1) // 2, -(size - 1) // 2 - 1, -1, dtype=torch.float64)
    kernel = torch.exp(-(x[None, :] ** 2 + y[:, None] ** 2) / (2 * sigma ** 2))
    return (kernel / kernel.sum()).float()


def _tf_resize(t: torch.Tensor, size: int) -> torch.Tensor:
    # tf.image.resize(method="bilinear"): half-pixel centres, no antialiasing (also when shrinking).
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


def _tf_same_blur(t: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    # tf.nn.conv2d(..., 'SAME') is a cross-correlation with zero padding, the extra row/column after.
    kh, kw = kernel.shape
    t = F.pad(t, ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2))
    return F.conv2d(t, kernel[None, None].to(t.dtype))


def preprocess_clickme(image: torch.Tensor, heatmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, H, W) image and (H, W) heatmap, any numeric dtype -> float32 (3, 224, 224) in [0, 255] and (224, 224)."""
    img = _tf_resize(image.float()[None], CLICKME_SIZE)[0]
    heat = _tf_resize(heatmap.float()[None, None], HEATMAP_BLUR_SIZE)
    heat = _tf_same_blur(heat, clickme_blur_kernel())
    heat = _tf_resize(heat, CLICKME_SIZE)[0, 0]
    return img, heat


def _decode_jpeg(data: bytes, mode: str, where: str) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode != mode:
                raise ValueError(f"{where}: expected a {mode} image, got mode {im.mode}")
            arr = np.asarray(im).copy()
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"{where}: cannot decode the image: {err}") from None
    t = torch.from_numpy(arr)
    return t.permute(2, 0, 1) if t.ndim == 3 else t


def _example_to_item(features: dict, where: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    for key, kind in (("image", bytes), ("heatmap", bytes), ("label", int)):
        value = features.get(key)
        if not value or len(value) != 1 or not isinstance(value[0], kind):
            raise ValueError(f"{where}: expected one {kind.__name__} feature {key!r} (ClickMe records have image, "
                             f"heatmap, label), found {sorted(features)}")
    image = _decode_jpeg(features["image"][0], "RGB", f"{where} 'image'")
    heatmap = _decode_jpeg(features["heatmap"][0], "L", f"{where} 'heatmap'")
    image, heatmap = preprocess_clickme(image, heatmap)
    return image, heatmap, int(features["label"][0])


def _expand_paths(data: Union[str, Path, Sequence[Union[str, Path]]]) -> list[Path]:
    items = [data] if isinstance(data, (str, Path)) else list(data)
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted((q for q in p.iterdir() if q.is_file() and q.name.endswith((".tfrecords", ".tfrecord"))),
                           key=_natural_key)
            if not found:
                raise FileNotFoundError(f"{p}: no *.tfrecords files in this folder")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return paths


def _natural_key(path: Path):
    # val-2 before val-10, as the reference lists its shards by index.
    import re

    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", path.name)]


class ClickMe(torch.utils.data.Dataset):
    """ClickMe (image, heatmap, label) items from tfrecord shards, a folder of them, or a `datasets` folder.

    Args:
        data: a .tfrecords file, a folder of them (read in shard order: val-0, val-1, ..., val-16), a list of
            files, or a folder written by `datasets.Dataset.save_to_disk` with columns image (an image), heatmap
            (an image or (H, W) array) and label (int).
        verify: check each TFRecord's data checksum (the length checksums are always checked).

    Items are the reference's preprocessing (module docstring): float32 image (3, 224, 224) in [0, 255], float32
    heatmap (224, 224) and the int label.
    """

    def __init__(self, data: Union[str, Path, Sequence[Union[str, Path]]], verify: bool = True) -> None:
        self.verify = verify
        self._hf = None
        if isinstance(data, (str, Path)) and Path(data).is_dir() and (
                (Path(data) / "state.json").is_file() or (Path(data) / "dataset_dict.json").is_file()):
            self._hf = _load_hf_folder(Path(data))
            self._index: list[tuple[Path, int]] = []
            return
        self.paths = _expand_paths(data)
        self._index = [(p, off) for p in self.paths for off in tfrecord_offsets(p)]

    def __len__(self) -> int:
        return len(self._hf) if self._hf is not None else len(self._index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self._hf is not None:
            return _hf_item(self._hf[i], f"item {i}")
        path, offset = self._index[i]
        with open(path, "rb") as f:
            data = _read_record_at(f, path, offset, self.verify)
        try:
            features = parse_example(data)
        except ValueError as err:
            raise ValueError(f"{path}: record at byte {offset} is {err}") from None
        return _example_to_item(features, f"{path}: record at byte {offset}")


def _load_hf_folder(path: Path):
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        split = "validation" if "validation" in ds else next(iter(ds))
        ds = ds[split]
    missing = {"image", "heatmap", "label"} - set(ds.column_names)
    if missing:
        raise ValueError(f"{path}: a ClickMe data set needs the columns image, heatmap, label; missing "
                         f"{sorted(missing)} (has {ds.column_names})")
    return ds


def _hf_item(row: dict, where: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    image = np.asarray(row["image"].convert("RGB") if hasattr(row["image"], "convert") else row["image"])
    heat = row["heatmap"]
    heat = np.asarray(heat.convert("F") if hasattr(heat, "convert") else heat, dtype=np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{where}: image must be RGB (H, W, 3), got shape {image.shape}")
    if heat.ndim == 3 and heat.shape[-1] == 1:
        heat = heat[..., 0]
    if heat.ndim != 2:
        raise ValueError(f"{where}: heatmap must be one channel (H, W), got shape {heat.shape}")
    img, hm = preprocess_clickme(torch.from_numpy(image.copy()).permute(2, 0, 1), torch.from_numpy(heat.copy()))
    return img, hm, int(row["label"])


def fraction_count(total: int, fraction: float, batch_size: int) -> int:
    """Images the study uses: whole batches only (the reference's drop_remainder), int(fraction * total / batch)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1], got {fraction!r}")
    batches = min(int(math.floor(fraction * total / batch_size)), total // batch_size)
    return batches * batch_size
