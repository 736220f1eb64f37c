"""Which objects may be used for what: the one train / validation / test split of the project.

Every piece of code that trains, tunes, calibrates or evaluates on known meshes reads this module
instead of keeping its own list, so that a *test* object is never seen before the test:

- ``train``: network training (correspondence network, RGB proposals), template and descriptor
  design, anything fitted by gradient or by hand.
- ``validation``: calibration (covariance scale, score exponents, thresholds) and model selection.
- ``test``: the out-of-domain test set (``pose_ood_set``) and the reported numbers only.

Real meshes are the YCB models of ``shared/data/ycb_dev`` (ids 1-12) and ``shared/data/ycb_train``
(ids 13-28 textured, 50-88 geometry only), split by BOP ``obj_id``. The test split keeps the four
``ycb_dev`` objects the shipped correspondence network was trained without (2, 5, 8, 11) and adds
unseen ``ycb_train`` objects chosen to be hard: thin (fork, wrench), small (golf ball, duplo),
flat (pudding box), untextured (mug, padlock, wrench, pudding box). Procedural objects are split by
seed: each split draws its shapes from its own seed, so the same shape never lands in two splits.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pose_node.core.errors import InvalidInputError

SPLITS: tuple[str, ...] = ("train", "validation", "test")

TEST_YCB_IDS: tuple[int, ...] = (2, 5, 8, 11, 15, 22, 27, 52, 57, 62, 63)
"""sugar box, gelatin box, orange, medium clamp, fork, golf ball, duplo (a), pudding box, mug,
padlock, adjustable wrench."""

VALIDATION_YCB_IDS: tuple[int, ...] = (14, 18, 25, 26, 51, 58, 60, 65)
"""plum, phillips screwdriver, wood blocks, toy airplane (c), tuna can, sponge, power drill, XL clamp."""

# Procedural objects: make_procedural_objects(n, seed) uses object seeds seed * 1000 + i.
PROCEDURAL_SEEDS: dict[str, int] = {"train": 50_000, "validation": 60_000, "test": 70_000}
# First obj_id of each split's procedural objects (clear of the YCB ids 1-88).
PROCEDURAL_FIRST_IDS: dict[str, int] = {"train": 1000, "validation": 2000, "test": 3000}


@dataclass(frozen=True)
class YcbSplitModels:
    """The YCB objects of one split found in a BOP models directory.

    Attributes:
        models_dir: the directory (``models_info.json`` + ``obj_XXXXXX.ply``).
        object_ids: the split's ids present in it, sorted.
    """

    models_dir: Path
    object_ids: tuple[int, ...]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InvalidInputError(f"unknown split {split!r}; expected one of {SPLITS}")


def split_of_ycb_id(object_id: int) -> str:
    """The split a YCB ``obj_id`` belongs to (every id not in test or validation is train)."""
    if object_id in TEST_YCB_IDS:
        return "test"
    if object_id in VALIDATION_YCB_IDS:
        return "validation"
    return "train"


def split_of_object_id(object_id: int) -> str | None:
    """The split of any object id of this project: YCB ids (< 1000) by :func:`split_of_ycb_id`,
    procedural ids by their split's id block (:data:`PROCEDURAL_FIRST_IDS`, 1000 ids each); None
    for ids outside both (a user's own objects, which no split governs)."""
    if object_id < min(PROCEDURAL_FIRST_IDS.values()):
        return split_of_ycb_id(object_id)
    for split, first in PROCEDURAL_FIRST_IDS.items():
        if first <= object_id < first + 1000:
            return split
    return None


def check_no_test_objects(object_ids, purpose: str) -> None:
    """Refuse to ``purpose`` (calibrate, tune, train) on data that holds test-split objects.

    Raises:
        InvalidInputError: naming the test-split ids found.
    """
    found = sorted(int(o) for o in object_ids if split_of_object_id(int(o)) == "test")
    if found:
        raise InvalidInputError(f"cannot {purpose} on test-split objects {found} (pose_node.datasets.splits): "
                                "use a validation-split set, e.g. pose_ood_set --split validation")


def check_not_test_set(path: str | Path, purpose: str) -> None:
    """Refuse to ``purpose`` (calibrate, select thresholds) on a BOP dataset of test-split data.

    A ``pose_ood_set`` output says its split and objects in ``ood_set.json``: a test split or a
    test-split object is refused. Any other BOP dataset is checked by the obj_ids of its
    ``models/models_info.json``.

    Raises:
        InvalidInputError: the set is a test split or holds test-split objects, or is not a BOP dataset.
    """
    meta = Path(path) / "ood_set.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        if info.get("split") == "test":
            raise InvalidInputError(f"cannot {purpose}: {meta} says it is the test split")
        ids = [int(o["obj_id"]) for o in info.get("objects", [])]
    else:
        models_info = Path(path) / "models" / "models_info.json"
        if not models_info.is_file():
            raise InvalidInputError(f"cannot {purpose}: {models_info} not found (not a BOP dataset)")
        ids = [int(k) for k in json.loads(models_info.read_text())]
    check_no_test_objects(ids, purpose)


def check_training_objects(object_ids) -> None:
    """Refuse to train on objects of the validation or test split (the caller is about to).

    Raises:
        InvalidInputError: naming the offending ids.
    """
    check_no_test_objects(object_ids, "train")
    held = sorted(int(o) for o in object_ids if split_of_object_id(int(o)) == "validation")
    if held:
        raise InvalidInputError(f"cannot train on validation-split objects {held} (pose_node.datasets.splits)")


def not_for_training() -> tuple[int, ...]:
    """YCB ids a training run must never load (test and validation)."""
    return tuple(sorted(TEST_YCB_IDS + VALIDATION_YCB_IDS))


def ycb_ids_in(models_dir: str | Path, split: str) -> YcbSplitModels:
    """The objects of ``split`` present in a BOP models directory (possibly none).

    Raises:
        InvalidInputError: unknown split, or no ``models_info.json`` in ``models_dir``.
    """
    _check_split(split)
    models_dir = Path(models_dir)
    info_path = models_dir / "models_info.json"
    if not info_path.is_file():
        raise InvalidInputError(f"{models_dir} is not a BOP models directory (no models_info.json)")
    ids = tuple(sorted(int(k) for k in json.loads(info_path.read_text()) if split_of_ycb_id(int(k)) == split))
    return YcbSplitModels(models_dir, ids)


def training_ycb_models(models_dirs, holdout=()) -> list[YcbSplitModels]:
    """The training-split objects of each BOP models directory, minus ``holdout``.

    Args:
        models_dirs: BOP ``models`` directories. holdout: ids never to load, on top of the
            validation and test splits.
    Returns:
        one :class:`YcbSplitModels` per directory (possibly with no ids).
    Raises:
        InvalidInputError: a directory without ``models_info.json``, or a selected id outside the
            training split (:func:`check_training_objects`: a guard against an edit of this
            function or of the split that would leak evaluation objects).
    """
    selected = []
    for models_dir in models_dirs:
        found = ycb_ids_in(models_dir, "train")
        ids = tuple(i for i in found.object_ids if i not in holdout)
        check_training_objects(ids)
        selected.append(YcbSplitModels(found.models_dir, ids))
    return selected


def default_ycb_models_dirs(repo_root: str | Path | None = None) -> list[Path]:
    """The YCB model folders beside the repository (``../shared/data/ycb_*/models``) that exist.

    They are there for the developers and CI, not in a user's fresh clone: callers must work
    without them (procedural objects only).
    """
    root = Path(repo_root) if repo_root is not None else Path(__file__).resolve().parents[2]
    candidates = [root.parent / "shared" / "data" / name / "models" for name in ("ycb_dev", "ycb_train")]
    return [p for p in candidates if (p / "models_info.json").is_file()]
