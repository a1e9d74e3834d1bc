"""Bad inputs to the data layer and the synthetic generator, as one table of cases.

Each case prepares a small data folder (three int16 TIFF slices with two-lung masks) or a small
generated set, may damage it, then feeds one bad input. It asserts the error class (or the
warning), that the message names the file or parameter concerned, and that nothing on disk
changed: every file and folder under the case's folder keeps its size, content and mtime, and no
temporary folder is left behind. Command-line cases also assert exit status 2 and exactly one
line on stderr, without a traceback.
"""

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np
import pytest

from lunghelpers import data, synthetic

SIZE = 32


def write(path, array, parameters=()):
    """Write an array as an image file with OpenCV, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array, list(parameters))
    return path


def two_lungs(size=SIZE, left_value=255, right_value=255):
    """A mask with a block on each side of the image."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[8:24, 4:12] = left_value
    mask[8:24, 20:28] = right_value
    return mask


def ramp(size=SIZE, dtype=np.int16):
    """An image whose values rise from -1000 to 1000 over its pixels."""
    return np.linspace(-1000, 1000, size * size).reshape(size, size).astype(dtype)


def make_pairs(root):
    """Three pairs a.tif, b.tif, c.tif in root/images and root/masks."""
    for name in ("a.tif", "b.tif", "c.tif"):
        write(root / "images" / name, ramp())
        write(root / "masks" / name, two_lungs())


def float_image_with(value, row=3, column=5):
    """A float32 ramp image with one pixel set to value (NaN, inf, ...)."""
    image = ramp(dtype=np.float32)
    image[row, column] = value
    return image


def jpeg_mask_pairs(root, quality):
    """Two pairs whose masks are JPEG files of two ellipses (JPEG noise at the borders)."""
    mask = np.zeros((64, 64), np.uint8)
    cv2.ellipse(mask, (18, 32), (9, 20), 0, 0, 360, 255, -1)
    cv2.ellipse(mask, (46, 32), (9, 20), 0, 0, 360, 255, -1)
    for name in ("a", "b"):
        write(root / "images" / f"{name}.png", np.tile(np.arange(0, 256, 4, np.uint8), (64, 1)))
        write(root / "masks" / f"{name}.jpg", mask, [cv2.IMWRITE_JPEG_QUALITY, quality])


def generated(root, count=2, seed=0):
    """A small generated CT set in root/set."""
    return synthetic.generate("ct", count, root / "set", size=64, seed=seed, progress=False)


def snapshot(folder):
    """Every path under folder with its kind, size, content hash and mtime."""
    state = {}
    for path in sorted(folder.rglob("*")):
        stat = path.lstat()
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        state[path.relative_to(folder).as_posix()] = (content, stat.st_size, stat.st_mtime_ns)
    return state


@dataclass
class Case:
    """One bad input: ``act(root)`` must raise ``error`` (or emit ``warning``) naming ``names``.

    ``setup(root, monkeypatch)`` prepares root before the snapshot (default: make_pairs).
    ``argv(root)`` instead of act makes it a command-line case: exit status 2, one stderr line.
    """

    id: str
    names: Callable | tuple
    act: Callable | None = None
    error: type | None = None
    warning: type | None = None
    setup: Callable = lambda root, monkeypatch: make_pairs(root)
    argv: Callable | None = None
    extra: dict = field(default_factory=dict)


def load(**arguments):
    """An act that loads the standard folders with some arguments."""
    return lambda root: data.load_pairs(
        root / "images", root / "masks", progress=False, **arguments
    )


def fractions(value, n=10, **arguments):
    return lambda root: data.split_indices(n, value, **arguments)


def damage(action):
    """A setup that makes the standard pairs, then applies action(root)."""

    def setup(root, monkeypatch):
        make_pairs(root)
        action(root)

    return setup


def with_set(action=lambda root: None, count=2):
    """A setup that generates a small set in root/set, then applies action(root)."""

    def setup(root, monkeypatch):
        generated(root, count)
        action(root)

    return setup


def build_cache_of(root, **arguments):
    return data.build_cache(root / "images", root / "masks", root / "cache", progress=False,
                            **arguments)


def write_text(relative, text):
    return lambda root: (root / relative).parent.mkdir(parents=True, exist_ok=True) or (
        root / relative
    ).write_text(text)


def made_cache(action):
    """A setup with the standard pairs and a built cache in root/cache, then action(root)."""

    def setup(root, monkeypatch):
        make_pairs(root)
        build_cache_of(root, image_size=(16, 16))
        action(root)

    return setup


def disk_full_after(writes):
    """A setup with a generated set whose next generation fails after ``writes`` files."""

    def setup(root, monkeypatch):
        generated(root)
        real_write = synthetic._write
        calls = []

        def failing_write(path, array):
            calls.append(path)
            if len(calls) > writes:
                raise OSError(28, "No space left on device")
            real_write(path, array)

        monkeypatch.setattr(synthetic, "_write", failing_write)

    return setup


def cli(*arguments):
    """argv builder: arguments may hold '{root}', replaced by the case's folder."""
    return lambda root: [argument.format(root=root) for argument in arguments]


CASES = [
    # ---------------------------------------------------------------- data-layer arguments
    Case("image_size string", ("image_size", "'64'"), load(image_size="64"), ValueError),
    Case("image_size one side", ("image_size",), load(image_size=(64,)), ValueError),
    Case("image_size zero side", ("image_size",), load(image_size=(64, 0)), ValueError),
    Case("image_size float side", ("image_size",), load(image_size=(64.0, 64)), ValueError),
    Case("image_size negative", ("image_size",), load(image_size=-3), ValueError),
    Case("image_size bool", ("image_size",), load(image_size=True), ValueError),
    Case("image_size huge", ("image_size", "4096"), load(image_size=(100000, 100000)),
         ValueError),
    Case("image_size None", ("image_size",), load(image_size=None), ValueError),
    Case("mask_mode typo", ("mask_mode", "did you mean 'labels'"), load(mask_mode="label"),
         ValueError),
    Case("mask_mode None", ("mask_mode",), load(mask_mode=None), ValueError),
    Case("normalization typo", ("normalization", "'minmax'"), load(normalization="min-max"),
         ValueError),
    Case("window reversed", ("window", "low < high"),
         load(normalization="window", window=(400, -1000)), ValueError),
    Case("window string", ("window",), load(normalization="window", window="-1000,400"),
         ValueError),
    Case("window NaN", ("window",), load(normalization="window", window=(float("nan"), 400)),
         ValueError),
    Case("limit zero", ("limit",), load(limit=0), ValueError),
    Case("limit string", ("limit", "'5'"), load(limit="5"), ValueError),
    Case("limit bool", ("limit",), load(limit=True), ValueError),
    Case("limit float", ("limit",), load(limit=2.5), ValueError),
    Case("image_dir None", ("image_dir",),
         lambda root: data.load_pairs(None, root / "masks", progress=False), ValueError),
    Case("image_dtype", ("image_dtype", "float32"),
         lambda root: build_cache_of(root, image_dtype="float32"), ValueError),
    # ---------------------------------------------------------------- split fractions
    Case("split string", ("fractions", "string '0.8,0.2'"), fractions("0.8,0.2"), ValueError),
    Case("split sum", ("fractions must sum to 1", "1.1"), fractions((0.6, 0.5)), ValueError),
    Case("split above one", ("fractions", "1.2"), fractions((1.2, -0.2)), ValueError),
    Case("split empty", ("fractions",), fractions(()), ValueError),
    Case("split NaN", ("fractions", "nan"), fractions((float("nan"), 0.5)), ValueError),
    Case("split string item", ("fractions", "'0.5'"), fractions((0.5, "0.5")), ValueError),
    Case("split empty part", ("fractions", "empty part"), fractions((0.01, 0.99)), ValueError),
    Case("split seed", ("seed",), fractions((0.5, 0.5), shuffle=True, seed=-1), ValueError),
    Case("split count", ("n must be",), fractions((0.5, 0.5), n=-1), ValueError),
    # ---------------------------------------------------------------- bad pixels and files
    Case("NaN pixel", ("images/b.tif", "non-finite", "row 3, column 5"), load(),
         data.DataError,
         setup=damage(lambda root: write(root / "images" / "b.tif",
                                         float_image_with(np.nan)))),
    Case("inf pixel", ("images/c.tif", "non-finite"), load(), data.DataError,
         setup=damage(lambda root: write(root / "images" / "c.tif",
                                         float_image_with(np.inf)))),
    Case("-inf mask pixel", ("masks/a.tif", "non-finite"), load(), data.DataError,
         setup=damage(lambda root: write(root / "masks" / "a.tif",
                                         float_image_with(-np.inf)))),
    Case("NaN pixel in the cache builder", ("images/b.tif", "non-finite"),
         lambda root: build_cache_of(root), data.DataError,
         setup=damage(lambda root: write(root / "images" / "b.tif",
                                         float_image_with(np.nan)))),
    Case("NaN pixel in labels mode", ("masks/b.tif", "non-finite"), load(mask_mode="labels"),
         data.DataError,
         setup=damage(lambda root: write(root / "masks" / "b.tif",
                                         float_image_with(np.nan)))),
    Case("constant image", ("1 image(s)", "constant", "b.tif"), load(), warning=UserWarning,
         setup=damage(lambda root: write(root / "images" / "b.tif",
                                         np.full((SIZE, SIZE), -1000, np.int16)))),
    Case("1x1 image", ("far smaller than image_size", "d.png (1x1)"), load(image_size=(8, 8)),
         warning=UserWarning,
         setup=damage(lambda root: (write(root / "images" / "d.png", np.ones((1, 1), np.uint8)),
                                    write(root / "masks" / "d.png", np.ones((1, 1), np.uint8))))),
    Case("thumbnail image", ("far smaller than image_size 256x256", "a.tif (32x32)"),
         load(image_size=256), warning=UserWarning),
    Case("labels on JPEG masks with few values", ("masks", "mask_mode='binary'", "JPEG noise"),
         load(mask_mode="labels", image_size=64), data.DataError,
         setup=lambda root, monkeypatch: jpeg_mask_pairs(root, 95)),
    Case("labels on JPEG masks with many values", ("masks", "distinct values",
                                                   "mask_mode='binary'"),
         load(mask_mode="labels", image_size=64), data.DataError,
         setup=lambda root, monkeypatch: jpeg_mask_pairs(root, 50)),
    Case("labels on binary masks", ("masks", "[0, 255]", "mask_mode='binary'"),
         load(mask_mode="labels"), data.DataError),
    Case("corrupt image file", ("images/b.tif", "could not read"), load(), data.DataError,
         setup=damage(lambda root: (root / "images" / "b.tif").write_bytes(b"not a TIFF"))),
    Case("empty image file", ("masks/c.tif", "could not read"), load(), data.DataError,
         setup=damage(lambda root: (root / "masks" / "c.tif").write_bytes(b""))),
    Case("image and mask sizes differ", ("masks/a.tif", "images/a.tif", "16x16"), load(),
         data.DataError,
         setup=damage(lambda root: write(root / "masks" / "a.tif", two_lungs()[:16, :16]))),
    Case("image without mask", ("extra.tif", "no mask"), load(), data.DataError,
         setup=damage(lambda root: write(root / "images" / "extra.tif", ramp()))),
    Case("missing mask folder", ("nowhere", "does not exist"),
         lambda root: data.load_pairs(root / "images", root / "nowhere", progress=False),
         data.DataError),
    Case("folder without images", ("notes", "holds no image files"),
         lambda root: data.load_pairs(root / "images", root / "notes", progress=False),
         data.DataError, setup=damage(write_text("notes/readme.txt", "no images here"))),
    Case("image folder is a file", ("notes.txt", "is a file"),
         lambda root: data.load_pairs(root / "notes.txt", root / "masks", progress=False),
         data.DataError, setup=damage(write_text("notes.txt", "not a folder"))),
    Case("dataset_dirs root None", ("root",), lambda root: data.dataset_dirs(None), ValueError),
    Case("dataset_dirs unknown layout", ("masks", "no data set found", "2d_images/"),
         lambda root: data.dataset_dirs(root / "masks"), data.DataError),
    Case("normalize NaN array", ("non-finite",),
         lambda root: data.normalize(float_image_with(np.nan), "zscore"), ValueError),
    # ---------------------------------------------------------------- caches
    Case("cache batch_size zero", ("batch_size", "got 0"),
         lambda root: data.cache_dataset(root / "cache", batch_size=0), ValueError,
         setup=made_cache(lambda root: None)),
    Case("cache indices out of range", ("indices", "from 0 to 2", "[1, 3]"),
         lambda root: data.cache_dataset(root / "cache", indices=[1, 3]), ValueError,
         setup=made_cache(lambda root: None)),
    Case("cache n_classes below its classes", ("n_classes", "at least 2", "got 0"),
         lambda root: data.cache_dataset(root / "cache", n_classes=0), ValueError,
         setup=made_cache(lambda root: None)),
    Case("damaged cache.json", ("cache.json", "damaged"),
         lambda root: data.load_cache(root / "cache"), data.DataError,
         setup=made_cache(lambda root: (root / "cache" / "cache.json").write_text("{not json"))),
    Case("truncated images.npy", ("images.npy", "damaged"),
         lambda root: data.load_cache(root / "cache"), data.DataError,
         setup=made_cache(lambda root: (root / "cache" / "images.npy").write_bytes(b"\x93NUMPY"))),
    Case("cache with other settings", ("cache", "other settings"),
         lambda root: build_cache_of(root, image_size=(24, 24)), data.DataError,
         setup=made_cache(lambda root: None)),
    Case("not a cache", ("images", "not a lunghelpers cache"),
         lambda root: data.load_cache(root / "images"), data.DataError),
    # ---------------------------------------------------------------- generator, from Python
    Case("generate count zero", ("count",),
         lambda root: synthetic.generate("ct", 0, root / "new", size=64), ValueError),
    Case("generate count huge", ("count", "100000"),
         lambda root: synthetic.generate("ct", 10**9, root / "new", size=64), ValueError),
    Case("generate size bool", ("size",),
         lambda root: synthetic.generate("ct", 2, root / "new", size=True), ValueError),
    Case("generate seed float", ("seed", "1.5"),
         lambda root: synthetic.generate("ct", 2, root / "new", size=64, seed=1.5), ValueError),
    Case("ensure_dataset unknown kind", ("kind", "'mri'"),
         lambda root: synthetic.ensure_dataset("mri", root=root), ValueError),
    Case("generate over user files", ("mine", "not a generated data set"),
         lambda root: synthetic.generate("ct", 2, root / "mine", size=64, overwrite=True,
                                         progress=False),
         data.DataError, setup=damage(write_text("mine/thesis.txt", "keep me"))),
    Case("generate over a file", ("afile", "is a file"),
         lambda root: synthetic.generate("ct", 2, root / "afile", size=64, progress=False),
         data.DataError, setup=damage(write_text("afile", "a file"))),
    Case("generate damaged marker", ("dataset.json", "damaged"),
         lambda root: synthetic.generate("ct", 3, root / "set", size=64, overwrite=True,
                                         progress=False),
         data.DataError, setup=with_set(write_text("set/dataset.json", "{"))),
    Case("overwrite keeps a file added to a set", ("2d_images/notes.txt", "did not write"),
         lambda root: synthetic.generate("ct", 3, root / "set", size=64, overwrite=True,
                                         progress=False),
         data.DataError, setup=with_set(write_text("set/2d_images/notes.txt", "mine"))),
    # ---------------------------------------------------------------- generator command line
    Case("cli count not a number", ("--count", "'abc'"), argv=cli("--count", "abc")),
    Case("cli unknown kind", ("--kind", "'mri'"), argv=cli("--kind", "mri")),
    Case("cli unknown option", ("unrecognized arguments", "--sizes"),
         argv=cli("--sizes", "64")),
    Case("cli count zero", ("count", "got 0"),
         argv=cli("--count", "0", "--out", "{root}/new", "--size", "64")),
    Case("cli size too small", ("size", "got 10"),
         argv=cli("--count", "2", "--out", "{root}/new", "--size", "10")),
    Case("cli size too large", ("size", "got 100000"),
         argv=cli("--count", "2", "--out", "{root}/new", "--size", "100000")),
    Case("cli negative seed", ("seed", "got -1"),
         argv=cli("--count", "2", "--out", "{root}/new", "--size", "64", "--seed", "-1")),
    Case("cli jpeg for ct", ("jpeg",),
         argv=cli("--count", "2", "--out", "{root}/new", "--size", "64", "--jpeg")),
    Case("cli empty out", ("out_dir (--out)",), argv=cli("--count", "2", "--out", "")),
    Case("cli overwrite without out", ("--overwrite needs --out",),
         argv=cli("--count", "2", "--overwrite")),
    Case("cli other settings without overwrite", ("set", "--overwrite", "other settings"),
         argv=cli("--count", "3", "--out", "{root}/set", "--size", "64"), setup=with_set()),
    Case("cli overwrite with a user file", ("set", "thesis.txt", "did not write"),
         argv=cli("--count", "3", "--out", "{root}/set", "--size", "64", "--overwrite"),
         setup=with_set(write_text("set/thesis.txt", "keep me"))),
    Case("cli out under a file", ("could not write", "afile/sub", "Not a directory"),
         argv=cli("--count", "2", "--out", "{root}/afile/sub", "--size", "64"),
         setup=damage(write_text("afile", "a file"))),
    Case("cli out is a user folder", ("mine", "not a generated data set"),
         argv=cli("--count", "2", "--out", "{root}/mine", "--size", "64", "--overwrite"),
         setup=damage(write_text("mine/thesis.txt", "keep me"))),
    Case("cli disk full during overwrite", ("could not write", "set", "No space left"),
         argv=cli("--count", "3", "--out", "{root}/set", "--size", "64", "--overwrite"),
         setup=disk_full_after(3)),
]


def test_the_table_is_large_and_named_uniquely():
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case, tmp_path, monkeypatch, capsys, recwarn):
    root = tmp_path / "case"
    root.mkdir()
    case.setup(root, monkeypatch)
    capsys.readouterr()
    recwarn.clear()
    before = snapshot(root)
    if case.argv is not None:
        with pytest.raises(SystemExit) as exit_info:
            synthetic.main(case.argv(root))
        assert exit_info.value.code == 2
        stderr = capsys.readouterr().err
        # The progress bar (tqdm, on stderr too) may come first; then exactly one error line.
        lines = [line for line in stderr.replace("\r", "\n").splitlines()
                 if line.strip() and not line.startswith("generating ")]
        assert len(lines) == 1, stderr
        assert "Traceback" not in stderr and lines[0].startswith("python -m lunghelpers.synthetic")
        message = lines[0]
    elif case.error is not None:
        with pytest.raises(case.error) as error_info:
            case.act(root)
        message = str(error_info.value)
    else:
        case.act(root)
        messages = [str(record.message) for record in recwarn
                    if issubclass(record.category, case.warning)]
        message = " | ".join(messages)
        assert len([text for text in messages if case.names[0] in text]) == 1, messages
    for name in case.names:
        assert name in message, message
    assert snapshot(root) == before  # nothing on disk changed, no temporary folder left behind
