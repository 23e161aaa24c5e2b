"""Catalogue of bad inputs to the data layer (issue 29): each gives one ``DataError`` line naming the file
(and member / line), what is wrong and what to do, and leaves nothing half-written behind.

Omniglot archives, downloads and caches; text files (CSV / JSON / JSON lines, CLINC150); miniImageNet CSV,
images, npz and pickle files; non-finite data and labels given to ``EpisodeSampler``.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from attnmeta.data import omniglot as om
from attnmeta.data import safe_io
from attnmeta.data import text as text_data
from attnmeta.data.miniimagenet import MiniImageNet
from attnmeta.data.omniglot import Omniglot, read_vinyals_split
from attnmeta.data.text import load_clinc150, load_text_pairs, text_dataset_from_pairs
from attnmeta.errors import DataError, is_user_error
from attnmeta.tasks.sampler import EpisodeSampler

ARCHIVE_FIX = ("the archive is damaged: delete it and download it again (download=True), or copy the "
               "official archive there")
ZIP_FIX = "delete it and download it again (download=True), or copy the official archive there"
CACHE_FIX = "delete it and run again to rebuild it from the source data"
FIRST = "images_background/Alpha0/character01/0001_01.png"


def raises_exactly(call, message: str) -> DataError:
    """``call()`` raises ``DataError`` whose text is exactly ``message`` (one line)."""
    with pytest.raises(DataError) as info:
        call()
    assert str(info.value) == message
    assert "\n" not in message and is_user_error(info.value)
    return info.value


def _png(size: int = 10, value: int = 0) -> bytes:
    buffer = io.BytesIO()
    image = np.full((size, size), 255, dtype=np.uint8)
    image[2:5, 2:8] = value
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _archive(path: Path, extra: dict[str, bytes] | None = None, replace: dict[str, bytes] | None = None,
             compression: int = zipfile.ZIP_STORED) -> Path:
    """A small ``images_background.zip``: 2 alphabets x 2 characters x 3 drawings (+ extra members)."""
    members = {f"images_background/Alpha{a}/character{c:02d}/{a * 100 + c:04d}_{d:02d}.png": _png(value=d)
               for a in range(2) for c in (1, 2) for d in (1, 2, 3)}
    members.update(replace or {})
    members.update(extra or {})
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return path


def _nothing_cached(cache: Path) -> bool:
    return not cache.exists() or not list(cache.rglob("*"))


def _load(root: Path, cache: Path) -> Omniglot:
    return Omniglot(root, image_size=8, cache_dir=cache)


# Omniglot archives ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("content", "problem"), [
    (b"this is not a png", "not an image file PIL can identify"),
    (_png()[:60], "the image data is truncated"),
])
def test_corrupt_png_member_names_the_archive_member(tmp_path, content, problem):
    archive = _archive(tmp_path / "images_background.zip", replace={FIRST: content})
    raises_exactly(lambda: _load(tmp_path, tmp_path / "cache"),
                   f"{archive}: member {FIRST}: cannot decode the image ({problem}); {ARCHIVE_FIX}")
    assert _nothing_cached(tmp_path / "cache")


@pytest.mark.parametrize("damage", ["truncate", "text"])
def test_truncated_or_non_zip_archive(tmp_path, damage):
    archive = _archive(tmp_path / "images_background.zip")
    content = archive.read_bytes()
    archive.write_bytes(content[: len(content) // 2] if damage == "truncate" else b"<html>Not Found</html>")
    raises_exactly(lambda: _load(tmp_path, tmp_path / "cache"),
                   f"{archive} is not a readable zip archive (truncated, or not a zip file); {ZIP_FIX}")
    assert _nothing_cached(tmp_path / "cache")


def _damage_member_data(archive: Path, name: str, new: bytes | None = None) -> None:
    """Overwrite the stored bytes of member ``name`` (flip its first byte, or write ``new``)."""
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(name)
    raw = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    if new is None:
        raw[start] ^= 0xFF
    else:
        raw[start:start + info.compress_size] = new[: info.compress_size].ljust(info.compress_size, b"\xff")
    archive.write_bytes(bytes(raw))


@pytest.mark.parametrize(("compression", "problem"), [
    (zipfile.ZIP_STORED, "CRC-32 check failed"),
    (zipfile.ZIP_DEFLATED, "its compressed data is damaged"),
])
def test_member_with_crc_or_zlib_error(tmp_path, compression, problem):
    archive = _archive(tmp_path / "images_background.zip", compression=compression)
    _damage_member_data(archive, FIRST, None if compression == zipfile.ZIP_STORED else b"\xff")
    raises_exactly(lambda: _load(tmp_path, tmp_path / "cache"),
                   f"{archive}: member {FIRST} is corrupt ({problem}); {ARCHIVE_FIX}")
    assert _nothing_cached(tmp_path / "cache")


@pytest.mark.parametrize("member", ["images_background/../../x.png", "images_background/A/../../x.png",
                                    "../images_background/A/character01/0000_01.png", "/etc/x.png",
                                    "images_background\\Alpha0\\character01\\0000_09.png"])
def test_unsafe_member_path_is_refused(tmp_path, member):
    archive = _archive(tmp_path / "images_background.zip", extra={member: _png()})
    raises_exactly(lambda: _load(tmp_path, tmp_path / "cache"),
                   f"{archive}: member {member!r} has an unsafe path (absolute, '..' or backslash); this is "
                   "not a genuine Omniglot archive: delete it and download it again (download=True)")
    assert _nothing_cached(tmp_path / "cache")


@pytest.mark.parametrize("member", ["images_background/Alpha0/0000_01.png",
                                    "images_background/Alpha0/character01/extra/0000_09.png",
                                    "images_background/Alpha0/char01/0000_01.png",
                                    "images_background/Alpha0/character01/drawing.png",
                                    "images_background/Alpha0/character01/0000_09.jpg",
                                    "images_background/Alpha0/character01/notes.txt"])
def test_member_outside_the_layout_is_refused(tmp_path, member):
    archive = _archive(tmp_path / "images_background.zip", extra={member: _png()})
    raises_exactly(lambda: _load(tmp_path, tmp_path / "cache"),
                   f"{archive}: member {member!r} does not follow the layout images_background/<Alphabet>/"
                   "characterNN/XXXX_YY.png; use the official archive (download=True) or repack it with that "
                   "layout")


def test_directories_macos_metadata_hidden_files_and_other_sets_are_ignored(tmp_path):
    (tmp_path / "plain").mkdir()
    plain = _load(_archive(tmp_path / "plain" / "images_background.zip").parent, tmp_path / "c1")
    extra = {"images_background/": b"", "images_background/Alpha0/": b"", "readme.txt": b"hi",
             "__MACOSX/images_background/Alpha0/._0000_01.png": b"\x00\x05",
             "images_background/.DS_Store": b"x", "images_background/Alpha0/character01/Thumbs.db": b"x",
             "images_evaluation/Other/character01/0000_01.png": b"not read"}
    _archive(tmp_path / "images_background.zip", extra=extra)
    padded = _load(tmp_path, tmp_path / "c2")
    assert torch.equal(padded.images, plain.images) and padded.characters == plain.characters


def test_duplicate_member_is_refused(tmp_path):
    archive = _archive(tmp_path / "images_background.zip")
    with warnings.catch_warnings(), zipfile.ZipFile(archive, "a") as zf:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        zf.writestr(FIRST, _png(value=9))
    raises_exactly(lambda: _load(tmp_path, tmp_path / "cache"),
                   f"{archive}: member {FIRST!r} appears twice; {ARCHIVE_FIX}")


def test_member_declaring_a_huge_size_is_not_read(tmp_path, monkeypatch):
    archive = _archive(tmp_path / "images_background.zip")
    monkeypatch.setattr(safe_io, "MAX_MEMBER_BYTES", 16)
    size = zipfile.ZipFile(archive).getinfo(FIRST).file_size
    raises_exactly(lambda: _load(tmp_path, tmp_path / "cache"),
                   f"{archive}: member {FIRST} declares {size} bytes, more than the 16 accepted for one "
                   f"file; {ARCHIVE_FIX}")


def test_archive_without_drawings(tmp_path):
    archive = _archive(tmp_path / "images_background.zip")
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "nothing")
    raises_exactly(lambda: _load(tmp_path, tmp_path / "cache"),
                   f"{archive} holds no images_background/<Alphabet>/characterNN/*.png drawings; is it the "
                   "official Omniglot archive?")


def test_corrupt_png_in_an_extracted_folder_names_the_file(tmp_path):
    folder = tmp_path / "images_background" / "Alpha0" / "character01"
    folder.mkdir(parents=True)
    (folder / "0000_01.png").write_bytes(_png())
    (folder / "0000_02.png").write_bytes(b"\x89PNG broken")
    raises_exactly(lambda: _load(tmp_path, tmp_path / "cache"),
                   f"{folder / '0000_02.png'}: cannot decode the image (not an image file PIL can identify); "
                   "replace it with the official drawing")
    assert _nothing_cached(tmp_path / "cache")


def test_extracted_folder_outside_the_layout_names_the_file(tmp_path):
    folder = tmp_path / "images_background" / "Alpha0" / "character01"
    folder.mkdir(parents=True)
    (folder / "0001_01.png").write_bytes(_png())
    (folder / "scan.png").write_bytes(_png())
    raises_exactly(lambda: _load(tmp_path, tmp_path / "cache"),
                   f"{tmp_path}: file 'images_background/Alpha0/character01/scan.png' does not follow the "
                   "layout images_background/<Alphabet>/characterNN/XXXX_YY.png; use the official archive "
                   "(download=True) or repack it with that layout")
    assert _nothing_cached(tmp_path / "cache")


def test_missing_omniglot_is_a_data_error_and_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        _load(tmp_path, tmp_path / "cache")
    assert isinstance(info.value, DataError) and is_user_error(info.value)
    assert str(info.value).startswith(f"Omniglot images_background not found: expected {tmp_path}")


def test_vinyals_split_with_invalid_utf8_names_the_line(tmp_path):
    split = tmp_path / "train.txt"
    split.write_bytes(b"Alpha0/character01/rot000\nAlpha0/character\xe902/rot090\n")
    raises_exactly(lambda: read_vinyals_split(split),
                   f"{split}:2: invalid UTF-8 (byte 0xe9); save the split file with UTF-8 encoding")


# Downloads --------------------------------------------------------------------------------------------------
def test_official_checksums_are_well_formed():
    assert set(om.OMNIGLOT_SHA256) == set(om.OMNIGLOT_MD5) == {"images_background", "images_evaluation"}
    assert all(re.fullmatch("[0-9a-f]{64}", v) for v in om.OMNIGLOT_SHA256.values())
    assert all(re.fullmatch("[0-9a-f]{32}", v) for v in om.OMNIGLOT_MD5.values())


@pytest.mark.parametrize("wrong", ["md5", "sha256"])
def test_download_with_a_wrong_checksum_is_deleted_and_says_so(tmp_path, monkeypatch, wrong):
    served = _archive(tmp_path / "images_background.zip")
    url = served.as_uri()
    monkeypatch.setattr(om, "OMNIGLOT_URL", url.replace("images_background", "{name}"))
    digests = {"md5": hashlib.md5(served.read_bytes()).hexdigest(),
               "sha256": hashlib.sha256(served.read_bytes()).hexdigest()}
    expected = {"md5": "0" * 32, "sha256": "0" * 64}[wrong]
    right = {k: (expected if k == wrong else v) for k, v in digests.items()}
    monkeypatch.setitem(om.OMNIGLOT_MD5, "images_background", right["md5"])
    monkeypatch.setitem(om.OMNIGLOT_SHA256, "images_background", right["sha256"])
    root = tmp_path / "root"
    target = root / "images_background.zip"
    raises_exactly(lambda: Omniglot(root, download=True, image_size=8, cache_dir=tmp_path / "cache"),
                   f"checksum mismatch for {target} (downloaded from {url}): {wrong} is {digests[wrong]}, "
                   f"expected {expected}; the download was deleted. Try to download it again later, or copy "
                   "the official archive there")
    assert list(root.iterdir()) == [] and _nothing_cached(tmp_path / "cache")


def test_local_archives_are_not_checked_against_the_official_digests(tmp_path):
    archive = _archive(tmp_path / "images_background.zip")
    assert hashlib.sha256(archive.read_bytes()).hexdigest() != om.OMNIGLOT_SHA256["images_background"]
    assert len(_load(tmp_path, tmp_path / "cache")) == 12


# Decoded caches ---------------------------------------------------------------------------------------------
class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _cached(tmp_path: Path) -> Path:
    _archive(tmp_path / "images_background.zip")
    return _load(tmp_path, tmp_path / "cache").cache_file


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_cache_names_the_file_and_is_left_alone(tmp_path, damage):
    cache_file = _cached(tmp_path)
    content = cache_file.read_bytes()
    damaged = {"truncated": content[: len(content) // 2], "empty": b"", "garbage": b"hello world"}[damage]
    cache_file.write_bytes(damaged)
    raises_exactly(lambda: _load(tmp_path, tmp_path / "cache"),
                   f"cache file {cache_file} is unreadable (it is truncated or damaged); {CACHE_FIX}")
    assert cache_file.read_bytes() == damaged


def test_poisoned_cache_is_never_unpickled(tmp_path):
    cache_file = _cached(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"images": _Exploit(marker)}, cache_file)
    raises_exactly(lambda: _load(tmp_path, tmp_path / "cache"),
                   f"cache file {cache_file} is unreadable (it holds Python objects other than tensors, "
                   f"which are never unpickled); {CACHE_FIX}")
    assert not marker.exists()


@pytest.mark.parametrize(("change", "problem"), [
    ({"images": torch.zeros(12, 1, 8, 8)}, "images are not uint8 [n, 1, 8, 8]"),
    ({"images": torch.zeros(12, 1, 9, 9, dtype=torch.uint8)}, "images are not uint8 [n, 1, 8, 8]"),
    ({"labels": torch.arange(12)}, "labels are not int64 [n] character ids"),
    ({"labels": torch.zeros(11, dtype=torch.long)}, "labels are not int64 [n] character ids"),
    ({"characters": "Alpha0/character01"}, "characters is not a list of 'Alphabet/characterNN' names"),
    ({"version": 0}, "version 0, expected 1"),
])
def test_cache_with_unexpected_content(tmp_path, change, problem):
    cache_file = _cached(tmp_path)
    stored = torch.load(cache_file, weights_only=True)
    stored.update(change)
    torch.save(stored, cache_file)
    raises_exactly(lambda: _load(tmp_path, tmp_path / "cache"),
                   f"cache file {cache_file} is not a valid attnmeta cache ({problem}); {CACHE_FIX}")


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    _archive(tmp_path / "images_background.zip")

    def crash(obj, path):
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="No space left"):
        _load(tmp_path, tmp_path / "cache")
    assert _nothing_cached(tmp_path / "cache")


# Text files -------------------------------------------------------------------------------------------------
def _write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("name", ["d.csv", "d.jsonl", "d.json"])
def test_invalid_utf8_names_file_and_line(tmp_path, name):
    rows = {"d.csv": b"text,label\nhello,greet\ncaf\xe9 au lait,order\n",
            "d.jsonl": b'{"text": "hello", "label": "greet"}\n{"text": "caf\xe9", "label": "order"}\n',
            "d.json": b'[["hello", "greet"],\n ["caf\xe9", "order"]]'}
    path = _write(tmp_path / name, rows[name])
    line = 3 if name == "d.csv" else 2
    kind = {"d.csv": "CSV", "d.jsonl": "JSON-lines", "d.json": "JSON"}[name]
    raises_exactly(lambda: load_text_pairs(path),
                   f"{path}:{line}: invalid UTF-8 (byte 0xe9); save the {kind} file with UTF-8 encoding")


def test_broken_json_names_file_and_line(tmp_path):
    path = _write(tmp_path / "d.json", '[\n ["a", "x"],\n ["b" "y"]\n]')
    raises_exactly(lambda: load_text_pairs(path),
                   f"{path}:3: invalid JSON (Expecting ',' delimiter at column 7); fix the file or export it "
                   "again as JSON")


def test_broken_json_line_names_file_and_line(tmp_path):
    path = _write(tmp_path / "d.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "hi", "label": }\n')
    raises_exactly(lambda: load_text_pairs(path),
                   f"{path}:3: invalid JSON (Expecting value at column 25); fix the file or export it again "
                   "as JSON")


def test_unterminated_csv_quote_names_the_line_where_it_opened(tmp_path):
    path = _write(tmp_path / "d.csv", 'text,label\nhello,greet\n"good bye,leave\nhi,greet\n')
    raises_exactly(lambda: load_text_pairs(path),
                   f"{path}:3: unterminated quoted field (the '\"' opened on this line is never closed); "
                   "close the quote, and write a quote inside a quoted field as \"\"")


def test_malformed_csv_quote_and_wrong_field_count(tmp_path):
    path = _write(tmp_path / "d.csv", 'text,label\n"hello"there,greet\n')
    raises_exactly(lambda: load_text_pairs(path),
                   f"{path}:2: malformed CSV (',' expected after '\"'); quote fields that contain the "
                   "delimiter and write a quote inside a quoted field as \"\"")
    path = _write(tmp_path / "e.csv", "text,label\nhello,greet\nhi, you,greet\n")
    raises_exactly(lambda: load_text_pairs(path),
                   f"{path}:3: 3 fields, but the header has 2; quote fields that contain ',' and give every "
                   "row 2 fields")


def test_empty_csv(tmp_path):
    path = _write(tmp_path / "d.csv", "")
    raises_exactly(lambda: load_text_pairs(path),
                   f"{path} is empty; it needs a header row (text,label) and data rows")


@pytest.mark.parametrize(("name", "content", "where"), [
    ("d.csv", "text,label\nhello,greet\n,greet\n", ":3"),
    ("d.tsv", "text\tlabel\nhello\tgreet\n   \tgreet\n", ":3"),
    ("d.json", '[["hello", "greet"], ["  ", "greet"]]', ": item 1"),
    ("d.json", '{"train": [["hello", "greet"]], "test": [["", "x"]]}', ": item 0 of 'test'"),
    ("d.jsonl", '{"text": "hello", "label": "greet"}\n{"text": "\\t", "label": "greet"}\n', ":2"),
])
def test_empty_or_whitespace_text_is_rejected(tmp_path, name, content, where):
    path = _write(tmp_path / name, content)
    raises_exactly(lambda: load_text_pairs(path),
                   f"{path}{where}: the text is empty or only whitespace; remove the item or give it a text")


@pytest.mark.parametrize(("name", "content", "message"), [
    ("d.csv", "text,label\nhello,greet\nbye,\n",
     ":3: empty label (missing, null or blank) for text 'bye'; give every text a label"),
    ("d.json", '[["hello", "greet"], ["bye", null]]',
     ": item 1: empty label (missing, null or blank) for text 'bye'; give every text a label"),
    ("d.jsonl", '{"text": "hello", "label": "greet"}\n{"text": "bye"}\n',
     ":2: record lacks field(s) ['label'] (has ['text']); pass text_field=/label_field= naming the text "
     "and label fields"),
    ("d.json", '[["hello", "greet"], ["bye", 1.5]]',
     ": item 1: the label 1.5 is a float; labels must be strings or integers"),
    ("d.json", '[["hello", "greet"], ["bye", ["a", "b"]]]',
     ": item 1: the label ['a', 'b'] is a list; labels must be strings or integers"),
    ("d.json", '[["hello", true], ["bye", false]]',
     ": item 0: the label True is a bool; labels must be strings or integers"),
    ("d.json", '[["hello", "1"], ["bye", 1]]',
     ": item 1: the label 1 is an integer but earlier labels are strings; give every label the same type"),
    ("d.json", '[["hello", "greet"], [42, "greet"]]',
     ": item 1: the text is 42 of type int; texts must be strings"),
    ("d.json", '[["hello", "greet"], ["only text"]]',
     ": item 1: got ['only text']; each item must be a (text, label) pair"),
    ("d.json", '"just a string"',
     ": JSON must be a list of pairs/objects or an object of such lists, got a str"),
])
def test_missing_or_wrongly_typed_labels_and_texts(tmp_path, name, content, message):
    path = _write(tmp_path / name, content)
    raises_exactly(lambda: load_text_pairs(path), f"{path}{message}")


def test_in_memory_pairs_are_checked_the_same_way():
    raises_exactly(lambda: text_dataset_from_pairs([("hello", "greet"), (" ", "greet")]),
                   "pairs: item 1: the text is empty or only whitespace; remove the item or give it a text")
    raises_exactly(lambda: text_dataset_from_pairs([], source="mine"), "mine: no (text, label) pairs found")
    numpy_labels = text_dataset_from_pairs([("a", np.int64(2)), ("b", 2), ("c", np.int32(1))])
    assert numpy_labels.class_names == ["1", "2"] and numpy_labels.labels.tolist() == [1, 1, 0]


def test_text_file_with_a_byte_order_mark_is_read(tmp_path):
    path = _write(tmp_path / "d.csv", "\ufefftext,label\nhello,greet\n".encode())
    assert load_text_pairs(path).texts == ["hello"]


def test_clinc150_local_file_with_a_wrong_checksum(tmp_path):
    path = _write(tmp_path / "data_full.json", '{"train": [')
    url, sha256 = text_data.CLINC150_FILES["data_full.json"]
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    raises_exactly(lambda: load_clinc150(tmp_path),
                   f"checksum mismatch for {path}: sha256 is {actual}, expected {sha256}; it is not the "
                   f"official CLINC150 file: delete it and run again with download=True, or put the official "
                   f"file from {url} there")
    assert path.exists()  # a local file is the user's: never deleted


def test_clinc150_download_with_a_wrong_checksum_is_deleted(tmp_path, monkeypatch):
    served = _write(tmp_path / "served.json", "{}")
    monkeypatch.setitem(text_data.CLINC150_FILES, "data_full.json", (served.as_uri(), "0" * 64))
    root = tmp_path / "root"
    actual = hashlib.sha256(b"{}").hexdigest()
    raises_exactly(lambda: load_clinc150(root, download=True),
                   f"checksum mismatch for {root / 'data_full.json'} (downloaded from {served.as_uri()}): "
                   f"sha256 is {actual}, expected {'0' * 64}; the download was deleted. Try to download it "
                   f"again later, or put the official file from {served.as_uri()} there")
    assert list(root.iterdir()) == []


def test_clinc150_json_is_parsed_with_line_numbers(tmp_path, monkeypatch):
    path = _write(tmp_path / "data_full.json", '{"train":\n [["a", "x"]\n')
    monkeypatch.setitem(text_data.CLINC150_FILES, "data_full.json",
                        ("file:///x", hashlib.sha256(path.read_bytes()).hexdigest()))
    raises_exactly(lambda: load_clinc150(tmp_path),
                   f"{path}:3: invalid JSON (Expecting ',' delimiter at column 1); fix the file or export it "
                   "again as JSON")


# miniImageNet -----------------------------------------------------------------------------------------------
def _jpeg(colour: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 12), (colour, 20, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _split(root: Path, csv_text: str | bytes | None = None, broken: dict[str, bytes] | None = None) -> Path:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for c in range(2):
        for i in range(3):
            (images / f"n{c}_{i}.jpg").write_bytes(_jpeg(40 * c + i))
    for name, content in (broken or {}).items():
        (images / name).write_bytes(content)
    rows = "filename,label\n" + "".join(f"n{c}_{i}.jpg,n{c}\n" for c in range(2) for i in range(3))
    return _write(root / "train.csv", rows if csv_text is None else csv_text)


def _mini(root: Path) -> MiniImageNet:
    return MiniImageNet(root, "train", image_size=12, cache_dir=root / "cache")


@pytest.mark.parametrize(("content", "problem"), [
    (b"GIF89a not really", "not an image file PIL can identify"),
    (_jpeg()[:40], "the image data is truncated"),
])
def test_corrupt_miniimagenet_image_names_the_file_and_csv_line(tmp_path, content, problem):
    csv_path = _split(tmp_path, broken={"n1_0.jpg": content})
    image = tmp_path / "images" / "n1_0.jpg"
    raises_exactly(lambda: _mini(tmp_path),
                   f"{image} (listed on {csv_path}:5): cannot decode the image ({problem}); replace it with "
                   "a valid image, or remove its row from the CSV")
    assert _nothing_cached(tmp_path / "cache")


@pytest.mark.parametrize(("rows", "message"), [
    ("filename,label\nn0_0.jpg,n0\n,n0\n", ":3: empty filename; every row needs 'filename,label'"),
    ("filename,label\nn0_0.jpg,\n", ":2: empty label; every row needs 'filename,label'"),
    ("filename,label\nn0_0.jpg,n0,extra\n", ":2: 3 fields, but the header has 2; quote fields that contain "
     "',' and give every row 2 fields"),
    ('filename,label\nn0_0.jpg,n0\n"n0_1.jpg,n0\n', ":3: unterminated quoted field (the '\"' opened on this "
     "line is never closed); close the quote, and write a quote inside a quoted field as \"\""),
    ("filename,label\nn0_0.jpg,n0\nn0_1.jpg,n0\nn0_0.jpg,n0\n",
     ":4: n0_0.jpg is listed twice (first on line 2); list each image once"),
    ("filename,label\n../secret.jpg,n0\n", ":2: filename '../secret.jpg' must be a file name inside {images} "
     "(no absolute path, '..' or backslash)"),
    ("filename,label\n/etc/x.jpg,n0\n", ":2: filename '/etc/x.jpg' must be a file name inside {images} "
     "(no absolute path, '..' or backslash)"),
    (b"filename,label\nn0_0.jpg,n\xff0\n", ":2: invalid UTF-8 (byte 0xff); save the CSV file with UTF-8 "
     "encoding"),
    ("file,class\nn0_0.jpg,n0\n", ":1: header ['file', 'class'] lacks column(s) ['filename', 'label']; "
     "expected a header 'filename,label'"),
])
def test_bad_miniimagenet_csv_rows_name_the_line(tmp_path, rows, message):
    csv_path = _split(tmp_path, rows)
    raises_exactly(lambda: _mini(tmp_path), f"{csv_path}{message.format(images=tmp_path / 'images')}")
    assert _nothing_cached(tmp_path / "cache")


def test_miniimagenet_csv_without_rows_and_missing_image(tmp_path):
    csv_path = _split(tmp_path, "filename,label\n\n")
    raises_exactly(lambda: _mini(tmp_path), f"{csv_path} lists no images")
    _split(tmp_path, "filename,label\nn0_0.jpg,n0\nabsent.jpg,n0\n")
    with pytest.raises(FileNotFoundError) as info:
        _mini(tmp_path)
    assert isinstance(info.value, DataError) and str(info.value) == (
        f"{csv_path}:3 lists absent.jpg but {tmp_path / 'images' / 'absent.jpg'} does not exist; put the "
        f"84x84 images of the split in {tmp_path / 'images'}")


def test_damaged_miniimagenet_cache(tmp_path):
    _split(tmp_path)
    cache_file = _mini(tmp_path).cache_file
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    raises_exactly(lambda: _mini(tmp_path),
                   f"cache file {cache_file} is unreadable (it is truncated or damaged); {CACHE_FIX}")
    torch.save({"images": torch.zeros(5, 3, 12, 12, dtype=torch.uint8),
                "labels": torch.zeros(5, dtype=torch.long), "classes": ["n0"]}, cache_file)
    raises_exactly(lambda: _mini(tmp_path), f"cache file {cache_file} is not a valid attnmeta cache (images "
                                            f"are not uint8 [6, 3, 12, 12]); {CACHE_FIX}")


NPZ_FIX = "recreate it with numpy.savez(path, image_data=uint8 [n, 84, 84, 3], labels=[n] ints or strings)"
PICKLE_FIX = ("recreate it as a dict {'image_data': uint8 [n, 84, 84, 3], 'class_dict': {wnid: [indices]}}, "
              "or convert it to .npz")


def test_damaged_or_wrong_npz(tmp_path):
    npz = tmp_path / "mini-imagenet-cache-train.npz"
    images = np.zeros((4, 12, 12, 3), dtype=np.uint8)
    np.savez(npz, image_data=images, labels=np.array([0, 0, 1, 1]))
    npz.write_bytes(npz.read_bytes()[:200])
    raises_exactly(lambda: _mini(tmp_path), f"{npz} is not a readable .npz file (damaged or wrong format); "
                                            f"{NPZ_FIX}")
    np.savez(npz, image_data=images, labels=np.array([0.0, np.nan, 1.0, 1.0]))
    raises_exactly(lambda: _mini(tmp_path), f"{npz}: labels must be a 1-d array of integers or strings, got "
                                            f"float64 (4,); {NPZ_FIX}")
    np.savez(npz, image_data=images, labels=np.array([{"a": 1}] * 4, dtype=object))
    raises_exactly(lambda: _mini(tmp_path), f"{npz} is not a readable .npz file (damaged or wrong format); "
                                            f"{NPZ_FIX}")
    np.savez(npz, image_data=images.astype(np.float32), labels=np.array([0, 0, 1, 1]))
    raises_exactly(lambda: _mini(tmp_path), f"{npz}: image_data must be uint8 [n, H, W, 3] with n >= 1, got "
                                            "float32 (4, 12, 12, 3)")


@pytest.mark.parametrize(("stored", "message"), [
    (None, " is not a readable pickle (truncated); " + PICKLE_FIX),
    ({"image_data": np.zeros((2, 12, 12, 3), np.uint8), "class_dict": {"n0": [0, 5]}},
     ": class_dict['n0'] entry 5 is no image index; each of the 2 images must be in exactly one class"),
    ({"image_data": np.zeros((2, 12, 12, 3), np.uint8), "class_dict": {"n0": [0, 1], "n1": [1]}},
     ": class_dict['n1'] entry 1 is listed twice; each of the 2 images must be in exactly one class"),
    ({"image_data": np.zeros((2, 12, 12, 3), np.uint8), "class_dict": {"n0": [0]}},
     ": image 1 belongs to no class of class_dict"),
    ({"image_data": np.zeros((2, 12, 12, 3), np.uint8), "class_dict": [0, 1]},
     " must hold a dict with 'image_data' and a 'class_dict' dict; " + PICKLE_FIX),
    ({"image_data": [np.zeros((2, 3)), np.zeros(4)], "class_dict": {"n0": [0, 1]}},
     ": image_data or a class_dict entry is not a regular array; " + PICKLE_FIX),
])
def test_damaged_or_wrong_pickle(tmp_path, stored, message):
    pkl = tmp_path / "mini-imagenet-cache-train.pkl"
    content = pickle.dumps(stored if stored is not None else {"image_data": np.zeros((2, 3), np.uint8)})
    pkl.write_bytes(content if stored is not None else content[:-10])
    raises_exactly(lambda: _mini(tmp_path), f"{pkl}{message}")


# EpisodeSampler ---------------------------------------------------------------------------------------------
LABELS = torch.arange(4).repeat_interleave(3)


def _nonfinite_data() -> torch.Tensor:
    data = torch.rand(12, 2, 2)
    data[5, 1, 0] = float("nan")
    data[7, 0, 0] = float("inf")
    data[7, 0, 1] = -float("inf")
    return data


@pytest.mark.parametrize("as_numpy", [False, True])
def test_sampler_rejects_nan_and_inf_data(as_numpy):
    data = _nonfinite_data()
    raises_exactly(lambda: EpisodeSampler(data.numpy() if as_numpy else data, LABELS, 2, 1, 1),
                   "data holds 3 non-finite values (NaN or inf), the first in example 5; remove those "
                   "examples or replace the values (e.g. torch.nan_to_num) before sampling")


def test_sampler_checks_the_tensors_a_dataset_holds_in_memory():
    raises_exactly(lambda: EpisodeSampler(TensorDataset(_nonfinite_data(), LABELS), LABELS, 2, 1, 1),
                   "dataset.tensors[0] holds 3 non-finite values (NaN or inf), the first in example 5; "
                   "remove those examples or replace the values (e.g. torch.nan_to_num) before sampling")


class _Lazy(Dataset):
    """Items made on demand (nothing in memory to check up front)."""

    def __init__(self, bad_index: int | None = None, label=None) -> None:
        self.bad_index, self.label = bad_index, label

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int):
        x = torch.full((2,), float(index))
        if index == self.bad_index and self.label is None:
            x[1] = float("nan")
        y = self.label if index == self.bad_index and self.label is not None else int(LABELS[index])
        return x, y


def test_sampler_checks_lazily_loaded_items_when_sampled():
    sampler = EpisodeSampler(_Lazy(bad_index=4), LABELS, 4, 2, 1)  # construction loads nothing
    raises_exactly(lambda: sampler.sample(),
                   "dataset item 4 holds non-finite values (NaN or inf); fix or remove it (e.g. "
                   "torch.nan_to_num in the dataset's transform)")


@pytest.mark.parametrize("label", [float("nan"), 1.5, torch.tensor(float("inf"))])
def test_sampler_rejects_non_integer_labels_carried_by_items(label):
    sampler = EpisodeSampler(_Lazy(bad_index=4, label=label), LABELS, 4, 2, 1)
    shown = label.item() if isinstance(label, torch.Tensor) else label
    raises_exactly(lambda: sampler.sample(),
                   f"dataset item 4 has label {shown}, not an integer class id; give every item an integer "
                   "label")


def test_integer_valued_float_item_labels_are_still_checked_against_labels():
    sampler = EpisodeSampler(_Lazy(bad_index=4, label=3.0), LABELS, 4, 2, 1)
    with pytest.raises(ValueError, match=re.escape("dataset item 4 has label 3 but labels[4] = 1")):
        sampler.sample()


@pytest.mark.parametrize("labels", [LABELS.double(), LABELS.float().numpy(), LABELS.tolist()])
def test_sampler_rejects_nan_labels(labels):
    if isinstance(labels, list):
        labels = [*labels[:3], float("nan"), *labels[4:]]
    else:
        labels[3] = float("nan")
    raises_exactly(lambda: EpisodeSampler(torch.rand(12, 2), labels, 2, 1, 1),
                   "labels hold 1 NaN/inf values, the first at index 3; every example needs an integer class "
                   "id: drop the unlabelled examples")


def test_sampler_rejects_fractional_float_labels():
    with pytest.raises(TypeError, match=re.escape("labels must be integers, got dtype torch.float32")):
        EpisodeSampler(torch.rand(12, 2), LABELS.float() + 0.5, 2, 1, 1)


def test_finite_float_data_and_uint8_data_are_accepted():
    assert EpisodeSampler(torch.rand(12, 2), LABELS, 2, 1, 1).sample().support_x.shape == (2, 2)
    images = torch.randint(0, 256, (12, 1, 4, 4), dtype=torch.uint8)
    assert EpisodeSampler(images, LABELS, 2, 1, 1).sample().support_x.dtype == torch.uint8
