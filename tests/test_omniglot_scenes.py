"""Omniglot scene episodes on a synthetic Omniglot set (and one check of the real splits)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnmeta.data.omniglot_scenes as scenes_module
from attnmeta.data.omniglot import Omniglot
from attnmeta.data.omniglot_scenes import (
    VAL_ALPHABETS,
    OmniglotScenes,
    SceneOptions,
    omniglot_scene_sources,
    render,
    scene_options,
)
from detection_fixtures import one_thread, synthetic_omniglot  # noqa: F401 (an autouse fixture)

ALONE = SceneOptions(distractors=(0, 0), clutter=(0, 0), noise=0.0, targets=(1, 1))


@pytest.fixture(scope="module")
def data() -> Omniglot:
    return synthetic_omniglot()  # 3 alphabets x 4 characters x 20 drawings, 64 px


def source(data: Omniglot, **kwargs) -> OmniglotScenes:
    shape = {"ways": 3, "shots": 2, "queries": 4, "seed": 0, **kwargs}
    return OmniglotScenes(data, torch.arange(data.num_characters), **shape)


def assert_same_task(a, b) -> None:
    for x, y in ((a.support_x, b.support_x), (a.support_y, b.support_y), (a.query_x, b.query_x),
                 (a.classes, b.classes)):
        assert torch.equal(x, y)
    assert len(a.query_boxes) == len(b.query_boxes)
    for x, y in zip(a.query_boxes + a.query_labels, b.query_boxes + b.query_labels):
        assert torch.equal(x, y)


def test_synthetic_set(data: Omniglot) -> None:
    assert data.images.shape == (240, 1, 64, 64) and data.images.dtype == torch.uint8
    assert data.characters[:2] == ["Alpha/character01", "Alpha/character02"]
    assert data.alphabets == ["Alpha", "Beta", "Gamma"]
    assert int(data.images.max()) == 255
    assert len(torch.unique(data.images.flatten(1), dim=0)) == 240  # every drawing is unique


def test_episode_shapes_and_dtypes(data: Omniglot) -> None:
    task = source(data).sample()
    assert task.support_x.shape == (6, 1, 32, 32) and task.support_x.dtype == torch.float32
    assert task.support_y.tolist() == [0, 0, 1, 1, 2, 2] and task.support_y.dtype == torch.long
    assert task.query_x.shape == (4, 1, 128, 128) and task.query_x.dtype == torch.float32
    assert 0 <= float(task.query_x.min()) and float(task.query_x.max()) <= 1
    assert task.classes.shape == (3,) and task.classes.dtype == torch.long
    assert len(set(task.classes.tolist())) == 3
    assert task.ways == 3 and task.shots == 2
    assert len(task.query_boxes) == len(task.query_labels) == 4
    for boxes, labels in zip(task.query_boxes, task.query_labels):
        assert boxes.dtype == torch.float32 and labels.dtype == torch.long
        assert boxes.shape == (len(labels), 4) and 1 <= len(labels) <= 3


def test_boxes_inside_and_tight_around_ink(data: Omniglot) -> None:
    scenes = source(data, queries=6)
    count = 0
    for task in scenes.fixed_tasks(4, seed=3):
        for image, boxes, labels in zip(task.query_x, task.query_boxes, task.query_labels):
            assert ((labels >= 0) & (labels < 3)).all()
            for x0, y0, x1, y1 in boxes.long().tolist():
                count += 1
                assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
                inside = image[0, y0:y1, x0:x1] > 0.5
                # every border row and column of the box holds ink
                assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
    assert count >= 24


def test_single_target_box_is_tight_ink_box(data: Omniglot) -> None:
    scenes = source(data, queries=8, options=ALONE)
    for task in scenes.fixed_tasks(3, seed=1):
        for image, boxes in zip(task.query_x, task.query_boxes):
            assert boxes.shape == (1, 4)
            rows, cols = torch.nonzero(image[0] > 0.5, as_tuple=True)
            tight = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            assert boxes[0].tolist() == [float(v) for v in tight]
            assert int((image > 0).sum()) > 0 and float(image.max()) <= 1.0


def test_distractor_boxes_cover_the_ink_no_target_box_holds() -> None:
    """``info["other_boxes"]``: with no clutter, every inked pixel (> 0.5) lies in a target or a distractor
    box, and each distractor box is tight around ink of its own."""
    data = synthetic_omniglot()
    options = SceneOptions(distractors=(2, 3), clutter=(0, 0), noise=0.0)
    count = 0
    for task in source(data, options=options).fixed_tasks(3, seed=2):
        assert len(task.info["other_boxes"]) == len(task.query_boxes)
        for image, boxes, others in zip(task.query_x, task.query_boxes, task.info["other_boxes"]):
            assert others.dtype == torch.float32 and others.shape[1] == 4
            covered = torch.zeros(128, 128, dtype=torch.bool)
            for x0, y0, x1, y1 in torch.cat([boxes, others]).long().tolist():
                covered[y0:y1, x0:x1] = True
            assert not bool(((image[0] > 0.5) & ~covered).any())  # boxes are tight around ink > 0.5
            for x0, y0, x1, y1 in others.long().tolist():
                count += 1
                inside = image[0, y0:y1, x0:x1] > 0.5
                assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
    assert count >= 12


def test_render_without_rotation_is_area_resizing(data: Omniglot) -> None:
    drawing = data.float_images()[5]
    for size in (20, 37, 56):
        out = render(drawing, size, 0.0)
        assert out.shape == (1, size, size)
        assert torch.equal(out, F.interpolate(drawing[None], size=size, mode="area")[0])
    turned = render(drawing, 40, 10.0)
    assert turned.shape == (1, 40, 40) and not torch.equal(turned, render(drawing, 40, 0.0))


def test_same_seed_same_episodes(data: Omniglot) -> None:
    a, b = source(data, seed=7), source(data, seed=7)
    for _ in range(2):
        assert_same_task(a.sample(), b.sample())
    assert not torch.equal(source(data, seed=8).sample().query_x, source(data, seed=7).sample().query_x)
    batch = source(data, seed=7).sample_batch(2)
    assert len(batch) == 2
    assert_same_task(batch.tasks[0], source(data, seed=7).sample())


def test_fixed_tasks_leave_the_generator_alone(data: Omniglot) -> None:
    scenes = source(data)
    before = scenes.generator.get_state()
    first = scenes.fixed_tasks(3, seed=5)
    assert torch.equal(scenes.generator.get_state(), before)
    for a, b in zip(first, scenes.fixed_tasks(3, seed=5)):
        assert_same_task(a, b)
    assert not torch.equal(first[0].query_x, scenes.fixed_tasks(1, seed=6)[0].query_x)
    with pytest.raises(ValueError, match="^ask for at least one episode, got n=0$"):
        scenes.fixed_tasks(0)


def test_state_dict_resumes_exactly(data: Omniglot) -> None:
    scenes = source(data, seed=2)
    scenes.sample()
    state = scenes.state_dict()
    expected = [scenes.sample(), scenes.sample()]
    resumed = source(data, seed=99)
    resumed.load_state_dict(state)
    for task in expected:
        assert_same_task(resumed.sample(), task)


def test_mismatched_state_is_refused(data: Omniglot) -> None:
    state = source(data, ways=2).state_dict()
    message = ("state was saved by a scene source with ways=2, this one has ways=3; load it into a source "
               "built the same way")
    with pytest.raises(ValueError) as error:
        source(data, ways=3).load_state_dict(state)
    assert str(error.value) == message
    with pytest.raises(ValueError) as error:
        source(data, ways=2, queries=5).load_state_dict(state)
    assert str(error.value) == ("state was saved by a scene source with queries=4, this one has queries=5; "
                                "load it into a source built the same way")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sizes": (30, 20)}, "scene option sizes must be [min, max] with 0 <= min <= max, got [30, 20]"),
    ({"targets": (2, 1)}, "scene option targets must be [min, max] with 0 <= min <= max, got [2, 1]"),
    ({"clutter": (-1, 2)}, "scene option clutter must be [min, max] with 0 <= min <= max, got [-1, 2]"),
    ({"targets": (0, 2)}, "scene option targets: every scene holds at least one target (min >= 1)"),
    ({"sizes": (4, 20)}, "scene option sizes must lie in [8, canvas=128], got [4, 20]"),
    ({"canvas": 48}, "scene option sizes must lie in [8, canvas=48], got [20, 56]"),
    ({"sizes": (20, 129)}, "scene option sizes must lie in [8, canvas=128], got [20, 129]"),
    ({"support_size": 7}, "support_size must be at least 8 pixels, got 7"),
    ({"noise": 0.5}, "scene options noise and max_overlap must lie in [0, 0.5) and [0, 1)"),
    ({"max_overlap": 1.0}, "scene options noise and max_overlap must lie in [0, 0.5) and [0, 1)"),
])
def test_bad_scene_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        SceneOptions(**kwargs)
    assert str(error.value) == message


def test_scene_options_from_config() -> None:
    options = scene_options({"sizes": [16, 40], "canvas": 96, "noise": 0.0})
    assert options == SceneOptions(sizes=(16, 40), canvas=96, noise=0.0)
    assert isinstance(options.sizes, tuple)
    with pytest.raises(ValueError) as error:
        scene_options({"canvs": 96, "zoom": 2})
    assert str(error.value) == ("unknown scene option 'canvs'; valid: canvas, clutter, distractors, "
                                "max_overlap, max_rotation, noise, sizes, support_size, targets")


def test_bad_episode_shapes(data: Omniglot) -> None:
    with pytest.raises(ValueError) as error:
        source(data, shots=20)
    assert str(error.value) == ("shots=20 leaves no drawing for the scenes: Omniglot has 20 drawings per "
                                "character; use fewer shots")
    with pytest.raises(ValueError) as error:
        OmniglotScenes(data, torch.arange(4), ways=5, shots=1, queries=1)
    assert str(error.value) == "ways=5 but this split has only 4 characters"
    with pytest.raises(ValueError) as error:
        source(data, queries=0)
    assert str(error.value) == "queries must be a positive integer, got 0"
    source(data, shots=19)  # one drawing left for the scenes is enough


def test_support_drawings_never_pasted(data: Omniglot, monkeypatch: pytest.MonkeyPatch) -> None:
    scenes = source(data, ways=2, shots=5, queries=6, options=SceneOptions(distractors=(1, 3)))
    rendered: list[torch.Tensor] = []

    def recording_render(drawing: torch.Tensor, size: int, angle: float) -> torch.Tensor:
        rendered.append(drawing)
        return render(drawing, size, angle)

    monkeypatch.setattr(scenes_module, "render", recording_render)
    flat, support_flat = scenes.images.flatten(1), scenes.support_images.flatten(1)

    def drawing_id(image: torch.Tensor, table: torch.Tensor) -> int:
        [match] = torch.nonzero((table == image.flatten()).all(1)).flatten().tolist()
        return match

    for _ in range(4):
        rendered.clear()
        task = scenes.sample()
        classes = set(task.classes.tolist())
        support = [drawing_id(x, support_flat) for x in task.support_x]
        assert [int(data.labels[i]) for i in support] == task.classes.repeat_interleave(5).tolist()
        pasted = [drawing_id(x, flat) for x in rendered]
        targets = [i for i in pasted if int(data.labels[i]) in classes]
        distractors = [i for i in pasted if int(data.labels[i]) not in classes]
        assert len(targets) == sum(len(labels) for labels in task.query_labels)
        assert not set(targets) & set(support)
        assert distractors  # 6 scenes with 1-3 distractors each
        alphabets = {int(data.character_alphabet[c]) for c in classes}
        assert {int(data.character_alphabet[data.labels[i]]) for i in distractors} <= alphabets


def test_real_omniglot_splits(shared_data) -> None:
    train, val, test = omniglot_scene_sources(shared_data / "omniglot", ways=5, shots=1, queries=2)
    background = Omniglot(shared_data / "omniglot", background=True, image_size=64)
    evaluation = Omniglot(shared_data / "omniglot", background=False, image_size=64)

    def alphabets(ids: torch.Tensor, data: Omniglot) -> set[str]:
        return {data.characters[i].split("/")[0] for i in ids.tolist()}

    train_alphabets, val_alphabets = alphabets(train.characters, background), alphabets(val.characters,
                                                                                         background)
    assert val_alphabets == set(VAL_ALPHABETS)
    assert not train_alphabets & val_alphabets and len(train_alphabets) == 26
    assert train.characters.numel() + val.characters.numel() == background.num_characters == 964
    assert torch.equal(test.characters, torch.arange(659)) and test.num_characters == 659
    assert torch.equal(test.images, evaluation.float_images())
    assert torch.equal(train.images, background.float_images()) and train.images is not test.images
    task = test.sample()
    assert task.query_x.shape == (2, 1, 128, 128) and task.support_x.shape == (5, 1, 32, 32)
    assert (train.generator.initial_seed(), val.generator.initial_seed(), test.generator.initial_seed()) \
        == (0, 1, 2)
