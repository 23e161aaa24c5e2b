"""CUB, FGVC-Aircraft, Flowers-102 and DTD (attnmeta.data.fine_grained): tiny releases in the official
layouts."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import attnmeta.data.fine_grained as fine_grained
from attnmeta.cli import main
from attnmeta.data import make_benchmark
from attnmeta.data.download import safe_extract_tar
from attnmeta.data.fine_grained import IMAGENET_MEAN, IMAGENET_STD, FineGrained, fine_grained_split
from attnmeta.data.fine_grained_files import SPLIT_DIR, read_mat_vector
from attnmeta.errors import DataError, UserError
from synthetic import one_line_error

PER_CLASS = 2
NAMES = ("cub", "aircraft", "flowers", "dtd")
SIZES = {"cub": (100, 50, 50), "aircraft": (70, 15, 15), "flowers": (71, 15, 16), "dtd": (33, 7, 7)}


def _png(red: int, green: int, size: tuple[int, int] = (12, 10)) -> bytes:
    """A flat image (red = class id, green = example) as PNG bytes (exact pixels), whatever its file name."""
    out = io.BytesIO()
    Image.new("RGB", size, (red, green, 7)).save(out, format="PNG")
    return out.getvalue()


def _classes(name: str) -> list[str]:
    return sorted(c for part in fine_grained_split(name).values() for c in part)


def _write_cub(root: Path) -> Path:
    folder = root / "CUB_200_2011"
    classes, images = [], []
    for i, cls in enumerate(_classes("cub")):
        (folder / "images" / cls).mkdir(parents=True)
        classes.append(f"{i + 1} {cls}")
        for k in range(PER_CLASS):
            rel = f"{cls}/{cls.split('.')[1]}_{k:04d}.jpg"
            (folder / "images" / rel).write_bytes(_png(i, 40 * k))
            images.append(f"{len(images) + 1} {rel}")
    (folder / "classes.txt").write_text("\n".join(classes) + "\n")
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    return root


def _write_aircraft(root: Path, boxes: bool = True) -> Path:
    data = root / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    classes = _classes("aircraft")
    (data / "variants.txt").write_text("\n".join(classes) + "\n")
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    box_lines = []
    for i, variant in enumerate(classes):
        for k in range(PER_CLASS):
            image_id = f"{1000000 + 10 * i + k:07d}"
            image = Image.new("RGB", (20, 30), (250, 250, 250))  # the aircraft: a box of the class's colour
            image.paste((i, 40 * k, 7), (4, 5, 14, 25))
            out = io.BytesIO()
            image.save(out, format="PNG")
            (data / "images" / f"{image_id}.jpg").write_bytes(out.getvalue())
            lines[("train", "val", "test")[(i + k) % 3]].append(f"{image_id} {variant}")
            box_lines.append(f"{image_id} 4 5 14 25")
    for part, rows in lines.items():
        (data / f"images_variant_{part}.txt").write_text("\n".join(rows) + "\n")
    if boxes:
        (data / "images_box.txt").write_text("\n".join(box_lines) + "\n")
    return root


def _mat(values: list[float], name: bytes = b"labels", compress: bool = False) -> bytes:
    """A MATLAB 5 file holding one double row vector (the layout of Flowers-102's imagelabels.mat)."""
    def element(kind: int, data: bytes) -> bytes:
        return struct.pack("<II", kind, len(data)) + data + b"\0" * (-len(data) % 8)

    body = (element(6, struct.pack("<II", 6, 0)) + element(5, struct.pack("<ii", 1, len(values)))
            + element(1, name) + element(9, np.asarray(values, dtype="<f8").tobytes()))
    matrix = struct.pack("<II", 14, len(body)) + body
    header = b"MATLAB 5.0 MAT-file, attnmeta test".ljust(116) + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    if compress:
        packed = zlib.compress(matrix)
        return header + struct.pack("<II", 15, len(packed)) + packed
    return header + matrix


def _write_flowers(root: Path) -> Path:
    (root / "jpg").mkdir(parents=True)
    labels = []
    for k in range(PER_CLASS):
        for label in range(1, 103):
            labels.append(float(label))
            (root / "jpg" / f"image_{len(labels):05d}.jpg").write_bytes(_png(label, 40 * k))
    (root / "imagelabels.mat").write_bytes(_mat(labels, compress=True))
    return root


def _write_dtd(root: Path) -> Path:
    for i, cls in enumerate(_classes("dtd")):
        (root / "dtd" / "images" / cls).mkdir(parents=True)
        for k in range(PER_CLASS):
            (root / "dtd" / "images" / cls / f"{cls}_{k:04d}.jpg").write_bytes(_png(i, 40 * k))
    (root / "dtd" / "images" / "waffled" / ".directory").write_text("[Dolphin]\n")  # as in the release
    return root


WRITERS = {"cub": _write_cub, "aircraft": _write_aircraft, "flowers": _write_flowers, "dtd": _write_dtd}


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    return {name: WRITERS[name](tmp_path_factory.mktemp(name)) for name in NAMES}


def _bench(name: str, root: Path, **kwargs):
    shape = {"ways": 5, "shots": 1, "queries": 1, "image_size": 16}
    return make_benchmark(name, root=root, **{**shape, **kwargs})


def test_packaged_splits_have_the_published_sizes_and_are_disjoint():
    for name in NAMES:
        parts = fine_grained_split(name)
        assert tuple(len(parts[p]) for p in ("train", "val", "test")) == SIZES[name]
        names = [c for part in parts.values() for c in part]
        assert len(set(names)) == len(names) == sum(SIZES[name])
        stored = json.loads((SPLIT_DIR / f"{name}.json").read_text())
        assert stored["note"] and stored["source"]
    cub = _classes("cub")  # Chen et al.: 0-based index in classes.txt order
    assert cub[0] == "001.Black_footed_Albatross" and cub[-1] == "200.Common_Yellowthroat"
    parts = fine_grained_split("cub")
    assert parts == {"train": cub[0::2], "val": cub[1::4], "test": cub[3::4]}
    assert "004.Groove_billed_Ani" in parts["test"] and "002.Laysan_Albatross" in parts["val"]
    assert {"Spitfire", "Boeing 717"} <= set(fine_grained_split("aircraft")["test"])
    assert [int(c[:3]) for c in _classes("flowers")] == list(range(1, 103))
    assert fine_grained_split("dtd")["val"] == ["gauzy", "grid", "lined", "paisley", "porous", "scaly",
                                                "spiralled"]


@pytest.mark.parametrize("name", NAMES)
def test_images_decode_and_episodes_come_from_the_split(roots, name, tmp_path):
    data = FineGrained(name, roots[name], image_size=16, cache_dir=tmp_path)
    classes = _classes(name)
    assert data.images.shape == (len(classes) * PER_CLASS, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.counts() == [PER_CLASS] * len(classes) and data.classes == classes
    first = 1 if name == "flowers" else 0  # red = the class's number (flowers: its 1-based label)
    reds = data.images[:, 0, 8, 8].long()
    assert torch.equal(reds, data.labels + first)
    bench = _bench(name, roots[name], cache_dir=tmp_path)
    assert bench.name == name and bench.input_shape == (3, 16, 16)
    assert bench.preprocessing["mean"] == list(IMAGENET_MEAN)
    split = fine_grained_split(name)
    for part in ("train", "val", "test"):
        task = getattr(bench, part).sample()
        assert task.support_x.shape == (5, 3, 16, 16) and task.query_x.shape == (5, 3, 16, 16)
        assert {classes[c] for c in task.classes.tolist()} <= set(split[part])
        expected = ((task.classes + first).float() / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
        torch.testing.assert_close(task.support_x[:, 0, 8, 8], expected)
    assert bench.info["train_classes"] == SIZES[name][0] and bench.info["images"] == len(data)


def test_aircraft_crops_to_the_bounding_box(roots, tmp_path):
    cropped = FineGrained("aircraft", roots["aircraft"], image_size=16, cache=False)
    assert cropped.crop and (cropped.images[:, 2] == 7).all()  # only the box: no white background left
    whole = FineGrained("aircraft", roots["aircraft"], image_size=16, cache=False, crop=False)
    assert not whole.crop and whole.images[:, :, 0, 0].eq(250).all()
    no_boxes = FineGrained("aircraft", _write_aircraft(tmp_path / "nb", boxes=False), image_size=16,
                           cache=False)
    assert not no_boxes.crop and torch.equal(no_boxes.images, whole.images)


def test_mat_reader(tmp_path):
    for compress in (False, True):
        (tmp_path / "a.mat").write_bytes(_mat([3.0, 1.0, 102.0], compress=compress))
        assert read_mat_vector(tmp_path / "a.mat", "labels", "fix").tolist() == [3, 1, 102]
    with pytest.raises(DataError, match=r"a\.mat holds no variable 'setid'; fix$"):
        read_mat_vector(tmp_path / "a.mat", "setid", "fix")
    (tmp_path / "b.mat").write_bytes(_mat([1.0], compress=True)[:150])
    with pytest.raises(DataError, match=r"b\.mat is truncated or damaged \(MATLAB 5 element at byte"):
        read_mat_vector(tmp_path / "b.mat", "labels", "fix")
    (tmp_path / "c.mat").write_bytes(b"\x89HDF\r\n" * 30)
    with pytest.raises(DataError, match=r"c\.mat is not a MATLAB 5 \.mat file; fix"):
        read_mat_vector(tmp_path / "c.mat", "labels", "fix")
    scipy_io = pytest.importorskip("scipy.io")
    scipy_io.savemat(tmp_path / "s.mat", {"labels": np.array([[5, 77, 1]], dtype=np.float64)},
                     do_compression=True)
    assert read_mat_vector(tmp_path / "s.mat", "labels", "fix").tolist() == [5, 77, 1]


def test_cache_round_trip_and_corrupt_cache(roots, tmp_path, monkeypatch):
    root = roots["dtd"]
    data = FineGrained("dtd", root, image_size=16, cache_dir=tmp_path)
    cache = tmp_path / "dtd-16px.safetensors"
    assert data.cache_file == cache and cache.is_file()

    def no_decode(*args, **kwargs):
        raise AssertionError("an image was decoded although the cache is valid")

    with monkeypatch.context() as patch:
        patch.setattr(fine_grained, "decode_image", no_decode)
        again = FineGrained("dtd", root, image_size=16, cache_dir=tmp_path)
    assert torch.equal(again.images, data.images) and torch.equal(again.labels, data.labels)
    cache.write_bytes(cache.read_bytes()[:500])
    with pytest.warns(UserWarning, match="is not a valid dtd cache .*truncated or damaged.*rebuilding"):
        assert torch.equal(FineGrained("dtd", root, image_size=16, cache_dir=tmp_path).images, data.images)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(cache), framework="pt") as handle:
        meta = handle.metadata()
    save_file({"images": data.images, "labels": data.labels.flip(0).contiguous()}, cache, metadata=meta)
    with pytest.warns(UserWarning, match="its labels are not those of the files"):
        assert torch.equal(FineGrained("dtd", root, image_size=16, cache_dir=tmp_path).labels, data.labels)


def _tar(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        if link is not None:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return path


def test_archive_is_extracted_safely(roots, tmp_path):
    root = tmp_path / "a"
    source = roots["dtd"] / "dtd"
    files = {f"dtd/{p.relative_to(source).as_posix()}": p.read_bytes()
             for p in source.rglob("*") if p.is_file()}
    _tar(root / "dtd-r1.0.1.tar.gz", files)
    data = FineGrained("dtd", root, image_size=16, cache=False)
    assert data.source == root / "dtd" and len(data) == 47 * PER_CLASS
    cases = (("up", "../evil.txt", None), ("abs", "/tmp/evil.txt", None), ("ln", None, "dtd/x"))
    for bad, member, link in cases:
        archive = _tar(tmp_path / bad / "dtd-r1.0.1.tar.gz", {member: b"x"} if member else {}, link)
        with pytest.raises(DataError, match=r"^refusing to extract .*dtd-r1\.0\.1\.tar\.gz: member '"):
            FineGrained("dtd", archive.parent, cache=False)
        assert not (tmp_path / "evil.txt").exists() and not (archive.parent / "dtd").exists()
    with pytest.raises(ValueError, match="link or special file"):
        safe_extract_tar(tmp_path / "ln" / "dtd-r1.0.1.tar.gz", tmp_path / "out")
    damaged = tmp_path / "d" / "dtd-r1.0.1.tar.gz"
    damaged.parent.mkdir()
    damaged.write_bytes((root / "dtd-r1.0.1.tar.gz").read_bytes()[:300])
    with pytest.raises(DataError, match=r"dtd-r1\.0\.1\.tar\.gz is not a readable \.tar\.gz archive "
                                        r"\(truncated or damaged\); delete it and download it again "
                                        r"\(--download, or from https://"):
        FineGrained("dtd", damaged.parent, cache=False)


def _message(kind, *args, **kwargs) -> str:
    return one_line_error(kind, FineGrained, *args, **kwargs)


def test_missing_data_and_refused_download(tmp_path):
    text = _message(FileNotFoundError, "cub", tmp_path / "nowhere")
    nowhere = tmp_path / "nowhere"
    assert text == (f"CUB-200-2011 not found (nothing in {nowhere}): expected classes.txt, images.txt, "
                    f"images in {nowhere / 'CUB_200_2011'}, or {nowhere / 'CUB_200_2011.tgz'};"
                    " get CUB_200_2011.tgz from https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
                    "?download=1 (md5 97eceeb196236b17998738112f37df78) into " + str(tmp_path / "nowhere")
                    + ", or pass --download (download=True)")
    partial = tmp_path / "partial"
    (partial / "jpg").mkdir(parents=True)
    text = _message(FileNotFoundError, "flowers", partial)
    assert text.startswith(f"VGG Flowers-102 not found ({partial / 'imagelabels.mat'} is missing)")
    assert "and imagelabels.mat from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat" in (
        text)
    text = _message(FileNotFoundError, "aircraft", tmp_path / "air", download=True)
    assert text.startswith("FGVC-Aircraft 2013b not found in ") and "knows no verified checksum" in text
    assert text.endswith(f"fgvc-aircraft-2013b.tar.gz into {tmp_path / 'air'} (attnmeta then extracts it)")
    with pytest.raises(ValueError, match=r"^dtd needs root= \(--root\): the folder with dtd/ or dtd-r1"):
        make_benchmark("dtd", root=None, ways=5, shots=1, queries=1)
    _tar(tmp_path / "fake" / "dtd-r1.0.1.tar.gz", {"dtd/readme.txt": b"x"})
    text = _message(ValueError, "dtd", tmp_path / "fake", download=True)  # not the official archive
    assert text.startswith("checksum mismatch for ") and "expected fff73e5086ae6bdbea199a49dfb8a4c1" in text


def test_bad_data_gives_one_line_errors(roots, tmp_path):
    root = _write_dtd(tmp_path / "dtd")
    bad = root / "dtd" / "images" / "banded" / "banded_0000.jpg"
    bad.write_bytes(b"not an image at all")
    assert _message(DataError, "dtd", root, cache=False) == (
        f"image file {str(bad)!r}: cannot decode the image (not an image file PIL can identify); the file is "
        "damaged: extract it again from dtd-r1.0.1.tar.gz "
        "(https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz)")
    bad.write_bytes(_png(1, 2))
    (root / "dtd" / "images" / "glittery").mkdir()
    assert _message(DataError, "dtd", root, cache=False).startswith(
        f"class 'glittery' of {root / 'dtd'} is not in the packaged dtd split file "
        f"({SPLIT_DIR / 'dtd.json'}); it is not the official DTD r1.0.1 release")
    (root / "dtd" / "images" / "glittery").rmdir()
    for path in (root / "dtd" / "images" / "woven").iterdir():
        path.unlink()
    assert _message(DataError, "dtd", root, cache=False).startswith(
        f"class 'woven' (test split) has no images in {root / 'dtd'}; the data is incomplete")
    cub = roots["cub"] / "CUB_200_2011"
    broken = tmp_path / "cub" / "CUB_200_2011"
    broken.mkdir(parents=True)
    (broken / "images").symlink_to(cub / "images")
    (broken / "classes.txt").write_bytes((cub / "classes.txt").read_bytes())
    (broken / "images.txt").write_text("1 999.Dodo/dodo_1.jpg\n")
    assert _message(DataError, "cub", broken.parent, cache=False).startswith(
        f"{broken / 'images.txt'}:1: image '999.Dodo/dodo_1.jpg' is in class folder '999.Dodo', which "
        "classes.txt does not list")
    with pytest.raises(UserError, match=r"^the dtd val split has 7 classes, fewer than ways = 8; lower "
                                        r"--ways$"):
        _bench("dtd", roots["dtd"], ways=8, cache=False)
    with pytest.raises(DataError, match=r"^class '001\.Black_footed_Albatross' \(train split\) has 2 "
                                        r"images in .*, fewer than shots \+ queries = 3; lower "
                                        r"--shots/--queries$"):
        _bench("cub", roots["cub"], shots=2, cache=False)
    with pytest.raises(ValueError, match=r"unknown flowers split 'vgg'; flowers has only 'default'"):
        _bench("flowers", roots["flowers"], split="vgg")
    with pytest.raises(TypeError, match=r"unknown dtd options \['crop'\]"):
        _bench("dtd", roots["dtd"], crop=False)


def test_cli_train_cub(roots, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "cub", "--root", str(roots["cub"]), "--algo", "protonet", "--steps", "2", "--ways",
                 "2", "--shots", "1", "--queries", "1", "--meta-batch", "1", "--image-size", "16",
                 "--eval-every", "2", "--eval-episodes", "2", "--test-episodes", "2", "--threads", "1",
                 "--set", "backbone_options.hidden=8", "--set", "plot=false", "--run-dir", str(run),
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (run / "summary.json").is_file() and (roots["cub"] / "cub-16px.safetensors").is_file()
    assert main(["train", "flowers", "--root", str(tmp_path / "missing"), "--algo", "protonet",
                 "--run-dir", str(tmp_path / "bad"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "VGG Flowers-102 not found" in err and "Traceback" not in err
