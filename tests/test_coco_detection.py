"""COCO-format detection data as few-shot detection episodes (attnmeta.data.coco_detection)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from attnmeta.data.coco_detection import CocoDetection, default_category_split, read_category_split
from attnmeta.data.coco_episodes import CocoEpisodes, coco_sources, support_crop
from attnmeta.data.safe_io import MissingDataError
from attnmeta.errors import DataError

#: category id -> (name, RGB colour); ids deliberately not contiguous.
CATEGORIES = {1: ("red", (255, 0, 0)), 2: ("green", (0, 255, 0)), 4: ("blue", (0, 0, 255)),
              7: ("yellow", (255, 255, 0)), 9: ("white", (255, 255, 255))}
BACKGROUND = 100
LAYOUT = '{"images": [...], "annotations": [...], "categories": [...]}'


def _sizes(i: int) -> tuple[int, int]:
    return (72, 90) if i >= 10 else (96, 80)  # (width, height): two portrait images among landscape ones


def _boxes(i: int) -> list[tuple[int, list[int]]]:
    """``(category id, [x, y, w, h])`` drawn in image ``i``: each category at most once, in its own band."""
    width, _ = _sizes(i)
    out = []
    for j, category in enumerate(CATEGORIES):
        if (i + j) % 3 == 0:
            continue
        x, w = 2 + (i * 7 + j * 5) % 40, 10 + (i * 3 + j) % 30
        out.append((category, [x, j * 16 + 2, min(w, width - x - 1), 6 + (i + j) % 8]))
    return out


def _coco() -> dict[str, Any]:
    images, annotations = [], []
    for i in range(12):
        width, height = _sizes(i)
        images.append({"id": 100 + i, "file_name": f"img{i:02d}.png", "width": width, "height": height})
        for category, bbox in _boxes(i):
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + i, "category_id": category,
                                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})
    # a crowd box (with an unknown category, even): skipped entirely
    annotations.append({"id": 999, "image_id": 100, "category_id": 55, "bbox": [0, 0, 5, 5], "iscrowd": 1})
    categories = [{"id": c, "name": name} for c, (name, _) in CATEGORIES.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def _write(root: Path, coco: dict[str, Any] | str, draw: bool = True) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    text = coco if isinstance(coco, str) else json.dumps(coco)
    (root / "annotations.json").write_text(text)
    for i in range(12) if draw else ():
        width, height = _sizes(i)
        pixels = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
        for category, (x, y, w, h) in _boxes(i):
            pixels[y:y + h, x:x + w] = CATEGORIES[category][1]
        Image.fromarray(pixels, "RGB").save(root / "images" / f"img{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("coco"), _coco())


@pytest.fixture(scope="module")
def data(root: Path) -> CocoDetection:
    return CocoDetection(root)


def _episodes(data: CocoDetection, seed: int = 0, **kwargs: Any) -> CocoEpisodes:
    args = {"ways": 3, "shots": 2, "queries": 3, "image_size": 48, "support_size": 16, "seed": seed, **kwargs}
    return CocoEpisodes(data, list(CATEGORIES), **args)


def _same(a: Any, b: Any) -> bool:
    return (torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
            and torch.equal(a.classes, b.classes) and all(map(torch.equal, a.query_boxes, b.query_boxes)))


def test_reads_annotations_and_skips_crowd_boxes(data: CocoDetection):
    assert len(data.images) == 12 and list(data.categories) == list(CATEGORIES)
    assert len(data.instances) == sum(len(_boxes(i)) for i in range(12))
    assert all(inst.category_id != 55 for inst in data.instances)
    first = data.instances[0]
    x, y, w, h = _boxes(0)[0][1]
    assert first.image_id == 100 and first.box == (x, y, x + w, y + h)
    assert data.image(100).size == (96, 80) and data.image(100) is data.image(100)  # cached


def test_episode_shapes_dtypes_and_labels(data: CocoDetection):
    task = _episodes(data).sample()
    assert task.support_x.shape == (6, 3, 16, 16) and task.support_x.dtype == torch.float32
    assert task.query_x.shape == (3, 3, 48, 48) and task.query_x.dtype == torch.float32
    assert 0 <= task.support_x.min() and task.query_x.max() <= 1
    assert task.support_y.tolist() == [0, 0, 1, 1, 2, 2] and task.support_y.dtype == torch.long
    assert task.ways == 3 and task.shots == 2 and len(set(task.classes.tolist())) == 3
    assert len(task.query_boxes) == len(task.query_labels) == 3
    for boxes, labels in zip(task.query_boxes, task.query_labels):
        assert boxes.dtype == torch.float32 and boxes.shape == (labels.numel(), 4) and labels.numel() >= 1
        assert labels.dtype == torch.long and 0 <= labels.min() and labels.max() < 3


def test_query_boxes_match_the_drawn_shapes_after_letterboxing(data: CocoDetection):
    source = _episodes(data)
    for task in source.fixed_tasks(4, seed=1):
        for image, boxes, labels in zip(task.query_x, task.query_boxes, task.query_labels):
            for box, label in zip(boxes, labels):
                colour = torch.tensor(CATEGORIES[int(task.classes[label])][1]) / 255
                mask = ((image - colour[:, None, None]).abs() < 0.2).all(0)
                ys, xs = torch.nonzero(mask, as_tuple=True)
                drawn = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
                assert (drawn - box).abs().max() <= 1.0, (drawn, box)
                assert box[0] >= 0 and box[1] >= 0 and box[2] <= 48 and box[3] <= 48


def test_letterbox_keeps_aspect_and_pads_with_zeros(data: CocoDetection):
    task = _episodes(data, ways=1, shots=1, queries=1, image_size=45).sample()
    image_id = task.info["query_image_ids"][0]
    width, height = data.images[image_id].width, data.images[image_id].height
    scale = 45 / max(width, height)
    new_w, new_h = round(width * scale), round(height * scale)
    assert task.query_x[0, :, :new_h, :new_w].amax(0).min() > 0.3  # no black pixel inside the image
    assert task.query_x[0, :, new_h:, :].abs().sum() == 0 and task.query_x[0, :, :, new_w:].abs().sum() == 0


def test_support_crop_is_a_square_around_the_box_with_zeros_beyond_the_image(data: CocoDetection):
    category, (x, y, w, h) = _boxes(5)[0]  # a wide box in the top band: its square sticks out above the image
    top = round(y + h / 2 - w / 2)
    assert category == 1 and w > h and top < 0
    crop = np.asarray(support_crop(data.image(105), (x, y, x + w, y + h), w)).astype(int)  # side w: no resize
    assert crop.shape == (w, w, 3) and (crop[:-top] == 0).all()  # the rows above the image
    assert (crop[y - top:y + h - top] == CATEGORIES[category][1]).all()
    assert (crop[y + h - top:] == BACKGROUND).all()


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from([(1, 1, 1), (2, 1, 4), (3, 2, 3), (5, 1, 2)]))
def test_episode_invariants_over_seeds(data: CocoDetection, seed: int, shape: tuple[int, int, int]):
    ways, shots, queries = shape
    source = _episodes(data, ways=ways, shots=shots, queries=queries)
    task = source.sample(torch.Generator().manual_seed(seed))
    chosen = task.classes.tolist()
    assert len(set(chosen)) == ways and set(chosen) <= set(CATEGORIES)
    queries_ids, support_ids = task.info["query_image_ids"], task.info["support_image_ids"]
    assert len(set(queries_ids)) == queries and not set(queries_ids) & set(support_ids)
    support = [data.instances[k] for k in range(len(data.instances))
               if data.instances[k].annotation in task.info["support_annotations"]]
    assert sorted(inst.category_id for inst in support) == sorted(c for c in chosen for _ in range(shots))
    for image_id, boxes, labels in zip(queries_ids, task.query_boxes, task.query_labels):
        expected = sorted(chosen.index(c) for c, _ in _boxes(image_id - 100) if c in chosen)
        assert sorted(labels.tolist()) == expected and expected
        assert boxes[:, :2].min() >= 0 and boxes[:, 2:].max() <= 48 and (boxes[:, 2:] > boxes[:, :2]).all()


def test_determinism_batches_and_fixed_tasks(data: CocoDetection):
    a, b = _episodes(data, seed=3), _episodes(data, seed=3)
    assert _same(a.sample(), b.sample())
    before = a.state_dict()["generator"]
    fixed = a.fixed_tasks(3, seed=5)
    assert torch.equal(a.state_dict()["generator"], before)
    assert all(map(_same, fixed, a.fixed_tasks(3, seed=5)))
    g1, g2 = torch.Generator().manual_seed(8), torch.Generator().manual_seed(8)
    batch = a.sample_batch(3, g1)
    assert len(batch) == 3 and all(_same(t, a.sample(g2)) for t in batch)


def test_exact_resume_and_mismatched_state(data: CocoDetection):
    source = _episodes(data, seed=1)
    source.sample()
    state = source.state_dict()
    following = source.sample_batch(2)
    resumed = _episodes(data, seed=77)
    resumed.load_state_dict(state)
    assert all(map(_same, following, resumed.sample_batch(2)))
    with pytest.raises(ValueError, match=r"^state was saved by a source with ways=3, this one has ways=2; "):
        _episodes(data, ways=2).load_state_dict(state)
    with pytest.raises(TypeError, match="CocoEpisodes.state_dict"):
        source.load_state_dict({"ways": 3})


def test_default_split_sources_are_disjoint(root: Path):
    train, val, test = coco_sources(root, ways=1, shots=1, queries=2, image_size=32, support_size=8, seed=4)
    parts = [set(s.classes.tolist()) for s in (train, val, test)]
    assert [len(p) for p in parts] == [3, 1, 1] and set().union(*parts) == set(CATEGORIES)
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert [s.generator.initial_seed() for s in (train, val, test)] == [4, 5, 6]
    assert test.sample().query_x.shape == (2, 3, 32, 32)
    again = coco_sources(CocoDetection(root), ways=1, shots=1, queries=2, image_size=32, seed=4)
    assert [set(s.classes.tolist()) for s in again] == parts  # a built data set works as well as its root


def test_split_file_with_ids_and_names(root: Path, tmp_path: Path, data: CocoDetection):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [1, "green", 4], "val": ["yellow"], "test": [9]}))
    assert read_category_split(split, data) == {"train": [1, 2, 4], "val": [7], "test": [9]}
    train, _, _ = coco_sources(root, split_file=split, ways=1, shots=1, queries=1, mode="L", image_size=24)
    assert train.classes.tolist() == [1, 2, 4] and train.sample().query_x.shape == (1, 1, 24, 24)


@pytest.mark.parametrize("content, message", [
    ({"train": [1, 3], "val": [7], "test": [9]}, "'train' entry 3 is not a category id of annotations.json; "
     "categories: 1, 2, 4, 7, 9"),
    ({"train": [1, "zebra"], "val": [7], "test": [9]}, "'train' entry 'zebra' is not a category name of "
     "annotations.json; fix the name or use the category id"),
    ({"train": [1, 2], "val": ["red"], "test": [9]}, "category 1 ('red') is listed in both 'train' and "
     "'val'; keep it in one part only"),
    ({"train": [1, 2], "val": [], "test": [9]}, "'val' must be a non-empty list of category ids or names; "
     "give every part at least one category"),
    ({"train": [1, True], "val": [7], "test": [9]}, "'train' entry True must be a category id (int) or name "
     "(str); fix the entry"),
])
def test_bad_split_files(tmp_path: Path, data: CocoDetection, content: dict, message: str):
    split = tmp_path / "split.json"
    split.write_text(json.dumps(content))
    with pytest.raises(DataError) as error:
        read_category_split(split, data)
    assert str(error.value) == f"split file {str(split)!r}: {message}"


def _set(where: str, index: int, key: str, value: Any) -> Any:
    return lambda coco: coco[where][index].__setitem__(key, value)


BAD_ANNOTATIONS = [
    (lambda coco: coco.pop("categories"),
     f"no 'categories' list; a COCO annotation file is a JSON object {LAYOUT}"),
    (_set("images", 3, "id", 101), "image 3 (id 101): duplicate image id (also image 1); give every image "
     "its own id"),
    (_set("categories", 2, "id", 2), "category 2 (id 2): duplicate category id (also category 1); give every "
     "category its own id"),
    (_set("images", 2, "file_name", "../secret.png"), "image 2 (id 102): file_name '../secret.png' must be "
     "a relative path inside images/; fix the file_name"),
    (_set("annotations", 5, "image_id", 77), "annotation 5 (id 6): unknown image id 77; use the id of an "
     "entry of 'images' or add the image"),
    (_set("annotations", 12, "category_id", 3), "annotation 12 (id 13): unknown category id 3; categories: "
     "1, 2, 4, 7, 9"),
    (_set("annotations", 4, "bbox", [1, 2, 3]), "annotation 4 (id 5): bbox must be 4 numbers [x, y, width, "
     "height], got [1, 2, 3]; fix the bbox"),
    (_set("annotations", 4, "bbox", [1, "2", 3, 4]), "annotation 4 (id 5): bbox must be 4 numbers [x, y, "
     "width, height], got [1, '2', 3, 4]; fix the bbox"),
    (_set("annotations", 4, "bbox", [10, 10, 5, 0]), "annotation 4 (id 5): bbox [10, 10, 5, 0] has width or "
     "height <= 0 (COCO bbox is [x, y, width, height], not corners); fix the bbox or remove the annotation"),
    (_set("annotations", 0, "bbox", [90, 10, 7.5, 5]), "annotation 0 (id 1): bbox [90, 10, 7.5, 5] ([x, y, "
     "width, height]) lies outside image 100 (96x80) by more than 1 pixel; fix the bbox or the image's "
     "width/height"),
]


@pytest.mark.parametrize("mutate, message", BAD_ANNOTATIONS)
def test_bad_annotation_files(tmp_path: Path, mutate: Any, message: str):
    coco = _coco()
    mutate(coco)
    _write(tmp_path, coco, draw=False)
    with pytest.raises(DataError) as error:
        CocoDetection(tmp_path)
    assert str(error.value) == f"{tmp_path / 'annotations.json'}: {message}"


def test_invalid_json_and_missing_paths(tmp_path: Path):
    _write(tmp_path, '{"images": [,]}', draw=False)
    with pytest.raises(DataError) as error:
        CocoDetection(tmp_path)
    assert str(error.value) == (f"{tmp_path / 'annotations.json'}:1: invalid JSON (Expecting value); fix the "
                                f"file (COCO format: {LAYOUT})")
    with pytest.raises(MissingDataError) as missing:
        CocoDetection(tmp_path / "nowhere")
    assert str(missing.value) == (f"COCO root {str(tmp_path / 'nowhere')!r} does not exist; point root= at a "
                                  "folder holding annotations.json and the images/ folder")
    with pytest.raises(MissingDataError, match=r"^annotation file .*other.json' does not exist; pass "):
        CocoDetection(tmp_path, annotations="other.json")
    with pytest.raises(MissingDataError, match=r"^image folder .*pics' does not exist; pass images= "):
        CocoDetection(tmp_path, images="pics")


def test_box_within_one_pixel_is_clipped(tmp_path: Path):
    coco = _coco()
    coco["annotations"][0]["bbox"] = [-0.5, 10, 96.9, 5]
    data = CocoDetection(_write(tmp_path, coco, draw=False))
    assert data.instances[0].box == (0.0, 10.0, 96.0, 15.0)


def test_missing_corrupt_and_mis_sized_image_files(tmp_path: Path):
    coco = _coco()
    coco["images"][4]["width"] = 95
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != 104]
    data = CocoDetection(_write(tmp_path, coco))
    folder = tmp_path / "images"
    (folder / "img01.png").unlink()
    with pytest.raises(MissingDataError) as missing:
        data.image(101)
    assert str(missing.value) == (f"image file {str(folder / 'img01.png')!r} (image id 101) does not exist; "
                                  "add it or remove the image from annotations.json")
    (folder / "img02.png").write_bytes(b"not a png at all")
    content = (folder / "img03.png").read_bytes()
    (folder / "img03.png").write_bytes(content[: len(content) // 2])
    for image_id, problem in ((102, "not a readable image"), (103, "the image data is truncated")):
        with pytest.raises(DataError) as error:
            data.image(image_id)
        path = folder / f"img0{image_id - 100}.png"
        assert str(error.value) == (f"image file {str(path)!r}: cannot decode the image ({problem}); replace "
                                    f"the file or remove image id {image_id} from annotations.json")
    with pytest.raises(DataError) as size:
        data.image(104)
    assert str(size.value) == (f"image file {str(folder / 'img04.png')!r} is 96x80 pixels, but "
                               "annotations.json says 95x80; fix the image's width/height")


def test_too_small_category_pools_say_what_to_lower(data: CocoDetection, tmp_path: Path):
    with pytest.raises(ValueError) as ways:
        _episodes(data, ways=6, shots=1, queries=1)
    assert str(ways.value) == ("only 5 of the 5 categories have at least shots = 1 instances, an episode "
                               "needs ways = 6 of them; lower ways or shots, or give this split more "
                               "categories")
    with pytest.raises(ValueError) as queries:
        _episodes(data, ways=2, shots=2, queries=7)
    assert str(queries.value) == ("only 0 of the 5 categories appear in at least shots + queries = 9 images "
                                  "(query images and support crops come from distinct images), an episode "
                                  "needs ways = 2 of them; lower queries, shots or ways, or give this split "
                                  "more categories")
    with pytest.raises(ValueError, match=r"^COCO val split: only 1 of the 1 categories"):
        coco_sources(data.root, ways=2, shots=1, queries=1)
    with pytest.raises(ValueError, match=r"^category id 3 is not a category of "):
        CocoEpisodes(data, [1, 3], ways=1, shots=1, queries=1)
    two = _coco()
    two["categories"] = two["categories"][:2]
    two["annotations"] = [a for a in two["annotations"] if a["category_id"] in (1, 2)]
    small = CocoDetection(_write(tmp_path, two, draw=False))
    with pytest.raises(DataError) as split:
        default_category_split(small)
    assert str(split.value) == (f"{tmp_path / 'annotations.json'}: the default category split needs at "
                                "least 3 categories (train, val, test), found 2; add categories or pass "
                                "split_file=")
