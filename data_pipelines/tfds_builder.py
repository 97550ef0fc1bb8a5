"""Canonical records -> ArrayRecord with a TensorFlow-free ``tensorflow_datasets`` builder, and back.

    path = build_array_record("train.jsonl", "/data/tfds", name="my_sft")   # or any records
    source = open_array_record("/data/tfds", "my_sft")                       # random access
    source[0]  # {"messages": [...], "images": [b"\\x89PNG...", ...], "videos": [...]}

Nothing here imports TensorFlow (it is not installed): ``GeneratorBasedBuilder`` writes ArrayRecord
through tfds' own example serializer, and ``builder_from_directory(...).as_data_source(split)``
reads it back with NumPy decoding. ``tfds.data_source(name, data_dir=..., download=False)`` reads
the same files too, as long as ``name`` is not also a dataset in the tfds catalog (then tfds
would pick the catalog's code); ``open_array_record`` goes through the directory instead.

Stored features (one example per record, written in input order: ``disable_shuffling=True``):

- ``messages``: ``Text``, the JSON of the canonical ``messages`` list;
- ``images`` / ``videos``: ``Sequence(Tensor(shape=(), dtype=object))``, one byte string per
  entry, with ``image_kinds`` / ``video_kinds`` (``Sequence(Text)``) saying what each holds:
  ``"bytes"`` (the encoded file, byte-identical to the input), ``"path"`` (a UTF-8 path or URL)
  or ``"frames"`` (a video given as a list of frame paths, as JSON).

Why not ``tfds.features.Image`` / ``Video``: on read they decode to pixel arrays, so the stored
bytes do not come back byte-identical, the decode runs in the reader rather than in the
preprocessing workers, and every image must have the declared channel count; encoding NumPy
images with them needs TensorFlow. Raw bytes keep the writer TF-free and the records exact;
decoding stays with the pipeline, as for the other sources.

``store_images="bytes"`` (default) reads every image file into the dataset (self-contained);
``"paths"`` stores paths (small, but the image folder must stay where it is). URLs and ``data:``
URIs are stored as they are (kind ``"path"``) in both modes. In-memory images (bytes, PIL images,
uint8 arrays) are always stored as bytes (PIL images and arrays encoded as PNG). ``store_videos``
works the same way but defaults to ``"paths"``: the video processor decodes from files. Records
that cannot be written (an ``_error`` record from the input, an unreadable file, an unsupported
entry) are skipped and counted (``on_error="skip"``, default) or raise (``on_error="raise"``); the
count and the first reasons are logged and saved in the dataset's ``metadata.json``
(``ArrayRecordSource.metadata``). Only ``messages``, ``images`` and ``videos`` are stored
(metadata keys such as ``_source`` are dropped).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import re
import types
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from data_pipelines.jsonl_source import ERROR_KEY, JsonlSource, error_record, is_error, resolve_media

log = logging.getLogger(__name__)

VERSION = "1.0.0"
STORE_MODES = ("bytes", "paths")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_NOT_A_FILE = ("http://", "https://", "data:")
_MAX_REASONS = 20


def _tfds():
    import tensorflow_datasets as tfds  # slow-ish import, kept out of module import time

    return tfds


# --- writing -------------------------------------------------------------------------------------


def _encode_entry(entry: Any, kind: str, store: str) -> tuple[bytes, str]:
    """One image/video entry -> (stored bytes, kind tag)."""
    if isinstance(entry, (bytes, bytearray, memoryview)):
        return bytes(entry), "bytes"
    if isinstance(entry, os.PathLike):
        entry = os.fspath(entry)
    if isinstance(entry, str):
        if store == "bytes" and not entry.startswith(_NOT_A_FILE):
            with open(entry, "rb") as f:
                return f.read(), "bytes"
        return entry.encode("utf-8"), "path"
    if kind == "video" and isinstance(entry, (list, tuple)) and all(isinstance(x, str) for x in entry):
        return json.dumps(list(entry)).encode("utf-8"), "frames"
    from PIL import Image

    if kind == "image" and isinstance(entry, np.ndarray):
        entry = Image.fromarray(np.asarray(entry, dtype=np.uint8))
    if kind == "image" and isinstance(entry, Image.Image):
        buf = io.BytesIO()
        entry.save(buf, format="PNG")
        return buf.getvalue(), "bytes"
    raise ValueError(f"unsupported {kind} entry of type {type(entry).__name__}")


def encode_record(record: dict[str, Any], image_root: str | None = None, store_images: str = "bytes",
                  store_videos: str = "paths") -> dict[str, Any]:
    """A canonical record -> the stored example (raises ValueError / TypeError / OSError with a
    reason)."""
    if not isinstance(record, dict):
        raise TypeError(f"a record must be a dict, got {type(record).__name__}")
    if is_error(record):
        raise ValueError(f"error record: {record[ERROR_KEY]}")
    messages = record.get("messages")
    if not isinstance(messages, list):
        raise TypeError("record has no 'messages' list")
    example: dict[str, Any] = {"messages": json.dumps(messages, ensure_ascii=False)}
    for kind, key, store in (("image", "images", store_images), ("video", "videos", store_videos)):
        data, kinds = [], []
        for entry in record.get(key) or []:
            if isinstance(entry, str) or (kind == "video" and isinstance(entry, list)):
                entry = resolve_media(entry, image_root, kind)
            blob, tag = _encode_entry(entry, kind, store)
            data.append(blob)
            kinds.append(tag)
        example[key] = data
        example[f"{kind}_kinds"] = kinds
    return example


def _iter_records(records: Iterable[Any]) -> Iterator[Any]:
    if hasattr(records, "__len__") and hasattr(records, "__getitem__") and not isinstance(records, dict):
        for i in range(len(records)):  # a random-access source
            try:
                yield records[i]
            except Exception as err:  # noqa: BLE001 - a bad record is counted, not fatal
                yield error_record(f"record {i}: {type(err).__name__}: {err}")
    else:
        yield from records


@functools.cache
def _builder_base() -> type:
    tfds = _tfds()

    class CanonicalRecordsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Writes canonical records; subclassed per dataset name by ``_builder_class``."""

        VERSION = tfds.core.Version(VERSION)
        # No download checksums to look up. tfds finds them next to the builder's source file via
        # `code_path`, which for a class in a package needs the `importlib_resources` backport
        # (tfds only declares it for Python < 3.9): skip the lookup instead.
        code_path = None

        def __init__(self, records: Iterable[Any] = (), image_root: str | None = None,
                     store_images: str = "bytes", store_videos: str = "paths", on_error: str = "skip",
                     **kwargs: Any):
            self._records, self._image_root = records, image_root
            self._store_images, self._store_videos, self._on_error = store_images, store_videos, on_error
            self.num_written = self.num_skipped = 0
            self.skip_reasons: list[str] = []
            super().__init__(**kwargs)

        def _info(self):
            bytes_seq = tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_))
            self._metadata = tfds.core.MetadataDict()
            return tfds.core.DatasetInfo(
                builder=self,
                description="Canonical {messages, images, videos} records (data_pipelines.tfds_builder).",
                features=tfds.features.FeaturesDict({
                    "messages": tfds.features.Text(),
                    "images": bytes_seq,
                    "image_kinds": tfds.features.Sequence(tfds.features.Text()),
                    "videos": bytes_seq,
                    "video_kinds": tfds.features.Sequence(tfds.features.Text()),
                }),
                disable_shuffling=True,
                metadata=self._metadata,
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, record in enumerate(_iter_records(self._records)):
                try:
                    example = encode_record(record, self._image_root, self._store_images, self._store_videos)
                except (ValueError, OSError, TypeError) as err:
                    if self._on_error == "raise":
                        raise ValueError(f"record {i}: {err}") from err
                    self.num_skipped += 1
                    if len(self.skip_reasons) < _MAX_REASONS:
                        self.skip_reasons.append(f"record {i}: {err}")
                    continue
                self.num_written += 1
                yield self.num_written - 1, example
            self._metadata.update({
                "store_images": self._store_images, "store_videos": self._store_videos,
                "num_written": self.num_written, "num_skipped": self.num_skipped,
                "skip_reasons": self.skip_reasons,
            })

    return CanonicalRecordsBuilder


_BUILDER_CLASSES: dict[str, type] = {}


def _builder_class(name: str) -> type:
    """One (unregistered) builder class per dataset name: tfds takes the name from the class."""
    if name not in _BUILDER_CLASSES:
        _BUILDER_CLASSES[name] = types.new_class(
            "CanonicalRecords_" + name, (_builder_base(),), {"skip_registration": True},
            lambda ns: ns.update(name=name, __module__=__name__))
    return _BUILDER_CLASSES[name]


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"dataset name must be snake_case ([a-z][a-z0-9_]*), got {name!r}")


def build_array_record(records_or_jsonl: Iterable[Any] | str | os.PathLike, data_dir: str | os.PathLike,
                       name: str = "canonical_records", *, image_root: str | os.PathLike | None = None,
                       format: str = "auto", store_images: str = "bytes",
                       store_videos: str = "paths", if_exists: str = "error", on_error: str = "skip",
                       progress: bool = False) -> str:
    """Write records (an iterable, a random-access source, or a JSONL path read with
    ``JsonlSource(path, image_root, format)``) as ArrayRecord under ``data_dir/name/1.0.0``; returns
    that folder. ``image_root`` resolves relative paths of in-memory records (for a JSONL path it
    is the source's root, default the file's folder). ``if_exists``: ``"error"`` | ``"overwrite"`` |
    ``"reuse"`` (keep the existing dataset, write nothing)."""
    _check_name(name)
    for arg, value, allowed in (("store_images", store_images, STORE_MODES),
                                ("store_videos", store_videos, STORE_MODES),
                                ("if_exists", if_exists, ("error", "overwrite", "reuse")),
                                ("on_error", on_error, ("skip", "raise"))):
        if value not in allowed:
            raise ValueError(f"{arg} must be one of {allowed}, got {value!r}")
    tfds = _tfds()
    data_dir = os.path.abspath(os.fspath(data_dir))
    target = os.path.join(data_dir, name, VERSION)
    if os.path.exists(os.path.join(target, "dataset_info.json")):
        if if_exists == "reuse":
            return target
        if if_exists == "error":
            raise FileExistsError(f"{target} already holds a dataset; pass if_exists='overwrite' or 'reuse'")
        import shutil

        shutil.rmtree(target)
    if isinstance(records_or_jsonl, (str, os.PathLike)):
        records: Iterable[Any] = JsonlSource(records_or_jsonl, image_root=image_root, format=format)
        image_root = None  # JsonlSource already resolved the paths
    else:
        records = records_or_jsonl
    root = None if image_root is None else os.path.abspath(os.fspath(image_root))
    builder = _builder_class(name)(records=records, image_root=root, store_images=store_images,
                                  store_videos=store_videos, on_error=on_error, data_dir=data_dir,
                                  file_format="array_record")
    from tensorflow_datasets.core.utils import tqdm_utils

    was_active = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(progress)
    downloads = os.path.join(data_dir, "downloads")
    existed = os.path.exists(downloads)
    try:
        builder.download_and_prepare(
            download_dir=downloads, download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    finally:
        tfds.display_progress_bar(was_active)
        if not existed:  # nothing is downloaded: drop the empty folders tfds made
            for folder in (os.path.join(downloads, "extracted"), downloads):
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
    if builder.num_skipped:
        log.warning("%s: skipped %d of %d records; first reasons: %s", name, builder.num_skipped,
                    builder.num_skipped + builder.num_written, builder.skip_reasons[:3])
    return os.fspath(builder.data_dir)


# --- reading -------------------------------------------------------------------------------------


def find_dataset_dir(data_dir: str | os.PathLike, name: str) -> str:
    """``data_dir/name/<highest version holding a dataset_info.json>``."""
    base = os.path.join(os.path.abspath(os.fspath(data_dir)), name)
    versions = []
    if os.path.isdir(base):
        for entry in os.listdir(base):
            parts = entry.split(".")
            if len(parts) == 3 and all(p.isdigit() for p in parts) and \
                    os.path.isfile(os.path.join(base, entry, "dataset_info.json")):
                versions.append((tuple(int(p) for p in parts), entry))
    if not versions:
        raise FileNotFoundError(f"no prepared dataset {name!r} under {data_dir} (expected {base}/X.Y.Z)")
    return os.path.join(base, max(versions)[1])


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def decode_entry(blob: Any, kind: str, image_root: str | None) -> Any:
    blob = bytes(blob)
    if kind == "bytes":
        return blob
    if kind == "path":
        return resolve_media(blob.decode("utf-8"), image_root, "image")
    if kind == "frames":
        return [resolve_media(p, image_root, "frame") for p in json.loads(blob.decode("utf-8"))]
    raise ValueError(f"unknown stored entry kind {kind!r}")


def decode_example(example: dict[str, Any], image_root: str | None = None) -> dict[str, Any]:
    """A stored example (as the tfds data source returns it) -> canonical record."""
    record: dict[str, Any] = {"messages": json.loads(_text(example["messages"]))}
    for kind, key in (("image", "images"), ("video", "videos")):
        blobs, kinds = list(example[key]), [_text(k) for k in example[f"{kind}_kinds"]]
        if len(blobs) != len(kinds):
            raise ValueError(f"{len(blobs)} {key} but {len(kinds)} {kind}_kinds")
        record[key] = [decode_entry(b, k, image_root) for b, k in zip(blobs, kinds)]
    return record


class ArrayRecordSource:
    """Random-access canonical records from a dataset written by ``build_array_record``.

    Opens lazily (``tfds.builder_from_directory(dir).as_data_source(split)``) and pickles as its
    arguments, so grain workers reopen the files themselves. Stored paths that are relative are
    resolved against ``image_root`` (absolute ones, the default for JSONL input, are kept).
    A stored example that cannot be decoded comes back as an ``_error`` record.
    """

    def __init__(self, data_dir: str | os.PathLike, name: str, split: str = "train",
                 image_root: str | os.PathLike | None = None):
        _check_name(name)
        self.data_dir, self.name, self.split = os.path.abspath(os.fspath(data_dir)), name, split
        self.image_root = None if image_root is None else os.path.abspath(os.fspath(image_root))
        self.dataset_dir = find_dataset_dir(self.data_dir, name)
        self._source: Any = None
        self._metadata: dict[str, Any] | None = None
        self._length = len(self._open())

    def _open(self) -> Any:
        if self._source is None:
            builder = _tfds().builder_from_directory(self.dataset_dir)
            self._metadata = dict(builder.info.metadata or {})
            self._source = builder.as_data_source(split=self.split)
        return self._source

    @property
    def metadata(self) -> dict[str, Any]:
        """What the writer recorded: store modes, written / skipped counts, first skip reasons."""
        self._open()
        return dict(self._metadata or {})

    def __len__(self) -> int:
        return self._length

    def _decode(self, index: int, example: Any) -> dict[str, Any]:
        try:
            return decode_example(example, self.image_root)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            return error_record(f"{self.dataset_dir}[{self.split}] record {index}: cannot decode: {err}")

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < self._length:
            raise IndexError(f"record {index} out of range [0, {self._length})")
        return self._decode(index, self._open()[index])

    def __getitems__(self, indices: Iterable[int]) -> list[dict[str, Any]]:
        indices = [int(i) for i in indices]
        for i in indices:
            if not 0 <= i < self._length:
                raise IndexError(f"record {i} out of range [0, {self._length})")
        return [self._decode(i, ex) for i, ex in zip(indices, self._open().__getitems__(indices))]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}

    def __repr__(self) -> str:
        return f"ArrayRecordSource({self.dataset_dir!r}, split={self.split!r}, len={self._length})"


def open_array_record(data_dir: str | os.PathLike, name: str, split: str = "train",
                      image_root: str | os.PathLike | None = None) -> ArrayRecordSource:
    """Open a dataset written by ``build_array_record`` as a random-access source."""
    return ArrayRecordSource(data_dir, name, split=split, image_root=image_root)
