"""Tests for ddpm_teach.data: toy sets, glyph digits, the real-data readers and the dispatcher.

Nothing here touches the network: urlopen is replaced by a function that fails the test, and the
download tests serve bytes from memory. The reader tests write tiny files in the official formats.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_teach import data
from ddpm_teach.data import (
    DATASETS,
    EIGHT_GAUSSIANS_CENTERS,
    EIGHT_GAUSSIANS_STD,
    GLYPH_FONTS,
    TOY_DATASETS,
    ChecksumError,
    DatasetNotFoundError,
    RemoteFile,
    data_root,
    glyph_digits,
    is_image_dataset,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_mnist,
    read_idx,
    toy_2d,
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to download: urlopen{args}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    # Keep every test away from the user's real cache.
    monkeypatch.setenv("DDPM_TEACH_DATA", str(tmp_path / "env-cache"))


# ------------------------------------------------------------------------------------------------
# 2-D toys
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_shape_scale_and_determinism(name):
    x = toy_2d(name, 4000, seed=3)
    assert x.shape == (4000, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert 0.5 < x.std(0).min() and x.std(0).max() < 2.0  # roughly unit scale
    assert x.abs().max() < 3.5
    assert torch.equal(x, toy_2d(name, 4000, seed=3))
    assert not torch.equal(x, toy_2d(name, 4000, seed=4))


def test_toy_uses_no_global_rng():
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    toy_2d("moons", 100)
    assert torch.equal(torch.rand(3), before)


def test_eight_gaussians_lie_near_their_centres():
    assert EIGHT_GAUSSIANS_CENTERS.shape == (8, 2)
    assert torch.allclose(EIGHT_GAUSSIANS_CENTERS.norm(dim=1), torch.full((8,), 2.0))
    x = toy_2d("eight-gaussians", 8000, seed=0)
    distance, nearest = torch.cdist(x, EIGHT_GAUSSIANS_CENTERS).min(dim=1)
    assert distance.max() < 6 * EIGHT_GAUSSIANS_STD
    # 2-D Gaussian: the squared distance / std^2 is chi-square with 2 dof, mean 2.
    assert abs((distance**2).mean() / EIGHT_GAUSSIANS_STD**2 - 2) < 0.15
    counts = torch.bincount(nearest, minlength=8)
    assert counts.min() > 850 and counts.max() < 1150  # 1000 each on average


def test_checkerboard_only_on_dark_squares():
    x = toy_2d("checkerboard", 5000)
    assert ((x.floor().sum(dim=1) % 2) == 0).all()
    assert x.min() >= -2 and x.max() < 2


def test_toy_bad_arguments():
    with pytest.raises(ValueError, match=r"eight-gaussians.*checkerboard"):
        toy_2d("spirals", 10)
    with pytest.raises(ValueError, match="n: expected a non-negative int"):
        toy_2d("moons", -1)
    with pytest.raises(ValueError, match="n: "):
        toy_2d("moons", 2.5)
    with pytest.raises(TypeError, match="seed"):
        toy_2d("moons", 10, seed="0")
    with pytest.raises(ValueError, match="seed: expected a non-negative int, got -1"):
        toy_2d("moons", 10, seed=-1)  # as course.seed_everything
    with pytest.raises(ValueError, match="seed: expected a non-negative int, got -3"):
        glyph_digits(4, seed=-3)
    assert toy_2d("moons", 0).shape == (0, 2)


# ------------------------------------------------------------------------------------------------
# Glyph digits
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def glyphs():
    return glyph_digits(2000, seed=0)


def test_glyph_fonts_ship_with_matplotlib():
    assert len(GLYPH_FONTS) == 16
    assert {f.family for f in GLYPH_FONTS} == {
        "DejaVu Sans",
        "DejaVu Serif",
        "DejaVu Sans Mono",
        "STIX",
    }
    assert {f.style for f in GLYPH_FONTS} == {"regular", "bold", "italic", "bold italic"}
    for font in GLYPH_FONTS:
        assert (data._FONT_DIR / font.file).is_file()


def test_distance_to_segments_on_a_unit_square():
    corners = torch.tensor([[0.0, 0], [1, 0], [1, 1], [0, 1]])
    square = torch.stack([corners, corners.roll(-1, 0)], dim=1)  # (4, 2, 2)
    points = torch.tensor([[0.5, 0.5], [2, 0.5], [2, 2], [0.5, -0.25], [0.9, 0.5]])
    expected = torch.tensor([0.5, 1, 2**0.5, 0.25, 0.1])
    assert torch.allclose(data._distance_to_segments(points, square), expected, atol=1e-6)
    inside = data._inside(torch.tensor([-0.5, 0.5, 1.5]), torch.tensor([0.5, 1.5]), square)
    assert inside.tolist() == [[False, True, False], [False, False, False]]


@pytest.mark.parametrize(
    ("file", "digit"), [("DejaVuSans.ttf", "8"), ("STIXGeneralItalic.ttf", "4")]
)
def test_glyph_sdf_sign_matches_an_even_odd_fill(file, digit):
    # The bank's winding-number inside test against an independent one: the parity of how many
    # of the glyph's contours (matplotlib's own flattening) contain the point. The two rules agree
    # for glyphs whose contours do not overlap, as here; the 8 has two holes, the 4 one.
    from matplotlib.font_manager import FontProperties
    from matplotlib.path import Path as MplPath
    from matplotlib.textpath import TextPath

    sdf, _, stroke = data._glyph_sdf(data._FONT_DIR / file, digit)
    path = TextPath((0, 0), digit, size=1, prop=FontProperties(fname=data._FONT_DIR / file))
    contours = path.to_polygons()
    lo, hi = np.concatenate(contours).min(0), np.concatenate(contours).max(0)
    # Tile pixel centres -> font units, undoing the bank's placement (box centred, 20 px, y down).
    c = (np.arange(sdf.shape[0]) + 0.5) / data._RES - data._TILE / 2
    gx, gy = np.meshgrid(c, c, indexing="xy")
    points = np.stack([gx.ravel(), -gy.ravel()], 1) * (hi - lo).max() / data._BOX + (lo + hi) / 2
    inside = np.zeros(len(points), bool)
    for contour in contours:
        inside ^= MplPath(contour).contains_points(points)
    inside = inside.reshape(sdf.shape)
    away = sdf.abs().numpy() > 0.3  # pixels right on the outline may go either way
    assert 200 < inside.sum() < 0.3 * inside.size
    assert ((sdf.numpy() < 0) == inside)[away].mean() > 0.999
    assert 1.0 < stroke < 3.0  # regular weights: 2-3 px strokes at this size


def test_glyph_shapes_range_and_balance(glyphs):
    images, labels = glyphs
    assert images.shape == (2000, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (2000,) and labels.dtype == torch.int64
    assert images.min() == -1 and images.max() == 1
    assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), 200))
    # Black background like MNIST: the outer frame is (almost always) exactly -1 ...
    frame = torch.cat([images[:, 0, [0, -1]].flatten(1), images[:, 0, :, [0, -1]].flatten(1)], 1)
    assert (frame == -1).float().mean() > 0.98
    # ... and every image has a digit's worth of ink, about as much as MNIST (mean 0.13 in [0, 1]).
    assert ((images > 0).sum(dim=(1, 2, 3)) >= 25).all()
    assert 0.10 < ((images + 1) / 2).mean() < 0.25


def test_glyphs_are_centred_like_mnist(glyphs):
    images, _ = glyphs
    ink = (images[:, 0] + 1) / 2
    centre = torch.arange(28.0) + 0.5
    mass = ink.sum(dim=(1, 2))
    cy = (ink.sum(2) * centre).sum(1) / mass
    cx = (ink.sum(1) * centre).sum(1) / mass
    assert (cy.mean() - 14).abs() < 0.5 and (cx.mean() - 14).abs() < 0.5
    assert (cy - 14).abs().max() < 4 and (cx - 14).abs().max() < 4
    rows = (images[:, 0] > 0).any(dim=2).float()  # (N, 28): rows with ink
    height = 28 - rows.argmax(1) - rows.flip(1).argmax(1)
    assert 17 < height.float().mean() < 23  # MNIST: digits fill a 20-pixel box


def test_glyph_labels_match_the_drawn_digit(glyphs):
    # A nearest-class-mean classifier fitted on one seed must read another seed's digits
    # (it scores about 0.82 on MNIST too); shuffled labels would give 0.1.
    images, labels = glyphs
    centroids = torch.stack([images[labels == d].flatten(1).mean(0) for d in range(10)])
    test_images, test_labels = glyph_digits(500, seed=1)
    predicted = torch.cdist(test_images.flatten(1), centroids).argmin(dim=1)
    assert (predicted == test_labels).float().mean() > 0.7


def test_glyph_variety(glyphs):
    images, labels = glyphs
    flat = images.flatten(1)
    random_pairs = (flat[:500] - flat[500:1000]).norm(dim=1).mean()
    for digit in range(10):
        same = torch.pdist(flat[labels == digit])
        # Within a class, images differ almost as much as random pairs do, and none repeat.
        assert same.mean() > 0.6 * random_pairs
        assert same.min() > 1.0


def test_glyph_determinism_and_seeds():
    a, la = glyph_digits(40, seed=7)
    b, lb = glyph_digits(40, seed=7)
    assert torch.equal(a, b) and torch.equal(la, lb)
    c, lc = glyph_digits(40, seed=8)
    # The same digit drawn under another seed looks different.
    first = int(la[0])
    other = c[lc == first][0]
    assert (a[0] - other).abs().max() > 0.5
    assert not torch.equal(a, c)


def test_glyph_bad_and_empty_counts():
    images, labels = glyph_digits(0)
    assert images.shape == (0, 1, 28, 28) and labels.shape == (0,)
    with pytest.raises(ValueError, match="n: expected a non-negative int"):
        glyph_digits(-5)


# ------------------------------------------------------------------------------------------------
# Tiny files in the official formats
# ------------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x0C: ">i4"}[type_code]
    header = bytes([0, 0, type_code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=dtype).tobytes()


def write_mnist(folder: Path, prefix: str, n: int = 5, gz: bool = True, seed: int = 0):
    """Write n random images and labels as IDX files; returns the uint8 arrays."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
        raw = idx_bytes(array)
        name = f"{prefix}-{kind}-ubyte"
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return images, labels


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_range(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1)


def test_read_idx_raw_gzip_and_other_types(tmp_path):
    array = np.arange(-6, 6, dtype=np.int32).reshape(3, 4) * 1000
    (tmp_path / "a").write_bytes(idx_bytes(array, 0x0C))
    (tmp_path / "b.gz").write_bytes(gzip.compress(idx_bytes(array, 0x0C)))
    for name in ("a", "b.gz"):
        out = read_idx(tmp_path / name)
        assert out.dtype == np.int32 and np.array_equal(out, array)


def test_read_idx_rejects_wrong_magic_and_truncation(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.zeros((2, 28, 28), np.uint8)))  # an images file
    with pytest.raises(ValueError, match=r"magic number 0x00000803.*expected 0x00000801"):
        read_idx(path, data.IDX_LABELS_MAGIC)
    path.write_bytes(idx_bytes(np.zeros((2, 28, 28), np.uint8))[:-10])
    with pytest.raises(ValueError, match=r"shape \(2, 28, 28\)"):
        read_idx(path)
    path.write_bytes(b"PK\x03\x04 not idx at all")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(path)
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 28, 28), np.uint8)))[:-20])
    with pytest.raises(ValueError, match=r"labels: not a complete gzip file .*download it again"):
        read_idx(path)  # an interrupted download, read with verify=False


def test_load_mnist_from_gz_and_raw_files(tmp_path):
    train_images, train_labels = write_mnist(tmp_path / "mnist", "train", n=5, gz=True)
    test_images, test_labels = write_mnist(tmp_path / "mnist", "t10k", n=3, gz=False, seed=1)
    x, y = load_mnist(root=tmp_path, verify=False)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], expected_range(train_images))
    assert torch.equal(y, torch.from_numpy(train_labels.astype(np.int64)))
    assert x.min() >= -1 and x.max() <= 1
    x, y = load_mnist(root=tmp_path, train=False)  # gunzipped files are not checksummed
    assert torch.equal(x[:, 0], expected_range(test_images)) and y.tolist() == test_labels.tolist()


def test_load_fashion_mnist_reads_its_own_folder(tmp_path):
    images, _ = write_mnist(tmp_path / "fashion-mnist", "train", n=4)
    x, _ = load_fashion_mnist(root=tmp_path, verify=False)
    assert torch.equal(x[:, 0], expected_range(images))
    with pytest.raises(DatasetNotFoundError):
        load_mnist(root=tmp_path)  # MNIST's files are not Fashion-MNIST's


def test_checksum_mismatch_names_file_and_both_digests(tmp_path):
    write_mnist(tmp_path / "mnist", "train")
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"  # checked first
    with pytest.raises(ChecksumError) as error:
        load_mnist(root=tmp_path)
    message = str(error.value)
    assert str(path) in message
    assert data._REMOTE_FILES["mnist"][path.name].sha256 in message
    assert sha256(path) in message


def test_real_digests_accept_the_right_files(tmp_path, monkeypatch):
    write_mnist(tmp_path / "mnist", "train")
    folder = tmp_path / "mnist"
    table = {
        p.name: RemoteFile(p.name, sha256(p), ("https://example.invalid/",))
        for p in folder.iterdir()
    }
    monkeypatch.setitem(data._REMOTE_FILES, "mnist", table)
    x, _ = load_mnist(root=tmp_path)  # verify=True passes
    assert x.shape == (5, 1, 28, 28)
    # One flipped byte in an archive is caught.
    raw = bytearray((folder / "train-labels-idx1-ubyte.gz").read_bytes())
    raw[-5] ^= 0xFF
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match=r"train-labels-idx1-ubyte.gz"):
        load_mnist(root=tmp_path)


def test_missing_files_error_says_what_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        load_mnist(root=tmp_path, train=False)
    assert isinstance(error.value, FileNotFoundError)
    message = str(error.value)
    assert str(tmp_path / "mnist") in message
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert name in message and data._REMOTE_FILES["mnist"][name].sha256 in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz" in message
    assert "download=True" in message
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-python.tar.gz"):
        load_cifar10(root=tmp_path)


def test_data_root_precedence(tmp_path, monkeypatch):
    assert data_root(tmp_path / "given") == tmp_path / "given"
    assert data_root() == tmp_path / "env-cache"  # set by the no_network fixture
    monkeypatch.delenv("DDPM_TEACH_DATA")
    assert data_root() == Path.home() / ".cache" / "ddpm_teach"
    write_mnist(tmp_path / "env-cache" / "mnist", "train", n=2)
    monkeypatch.setenv("DDPM_TEACH_DATA", str(tmp_path / "env-cache"))
    assert load_mnist(verify=False)[0].shape == (2, 1, 28, 28)


# ------------------------------------------------------------------------------------------------
# Downloads, served from memory
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def served(monkeypatch):
    """Serve url -> bytes from a dict; any other URL fails like a dead network."""
    pages: dict[str, bytes] = {}

    def urlopen(url, timeout=None):
        if url not in pages:
            raise urllib.error.URLError(f"no route to {url}")
        return io.BytesIO(pages[url])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return pages


def fake_mnist_release(tmp_path, monkeypatch, served, corrupt: str | None = None):
    """Publish tiny MNIST files at two mirrors (the first one dead) with their real digests."""
    source = tmp_path / "release"
    images, labels = write_mnist(source, "train", n=5)
    table = {}
    for path in source.iterdir():
        urls = (f"https://dead.invalid/{path.name}", f"https://mirror.invalid/{path.name}")
        table[path.name] = RemoteFile(path.name, sha256(path), urls)
        body = path.read_bytes()
        served[urls[1]] = body + b"junk" if path.name == corrupt else body
    monkeypatch.setitem(data._REMOTE_FILES, "mnist", table)
    return images, labels


def test_download_fetches_verifies_and_renames(tmp_path, monkeypatch, served):
    images, _ = fake_mnist_release(tmp_path, monkeypatch, served)
    x, _ = load_mnist(root=tmp_path / "cache", download=True)
    assert torch.equal(x[:, 0], expected_range(images))
    folder = tmp_path / "cache" / "mnist"
    assert sorted(os.listdir(folder)) == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]
    served.clear()  # present files are not downloaded again
    assert load_mnist(root=tmp_path / "cache", download=True)[0].shape == (5, 1, 28, 28)


def test_download_checksum_mismatch_leaves_nothing_behind(tmp_path, monkeypatch, served):
    fake_mnist_release(tmp_path, monkeypatch, served, corrupt="train-labels-idx1-ubyte.gz")
    expected = data._REMOTE_FILES["mnist"]["train-labels-idx1-ubyte.gz"].sha256
    with pytest.raises(ChecksumError, match=f"train-labels-idx1-ubyte.gz.*expected {expected}"):
        load_mnist(root=tmp_path / "cache", download=True)
    left = os.listdir(tmp_path / "cache" / "mnist")
    assert "train-labels-idx1-ubyte.gz" not in left and not [f for f in left if f.endswith(".part")]


def test_download_without_network_explains(tmp_path, monkeypatch, served):
    fake_mnist_release(tmp_path, monkeypatch, served)
    served.clear()
    with pytest.raises(DatasetNotFoundError, match=r"(?s)Downloading failed.*no route to"):
        load_mnist(root=tmp_path / "cache", download=True)


# ------------------------------------------------------------------------------------------------
# CIFAR-10 pickles
# ------------------------------------------------------------------------------------------------


def cifar_batch(n: int, first_label: int) -> bytes:
    # Channel planes: red 0, green 255, blue 128 + the image index, so RGB order is checkable.
    planes = np.zeros((n, 3, 1024), np.uint8)
    planes[:, 1] = 255
    planes[:, 2] = 128 + np.arange(n)[:, None]
    batch = {
        b"batch_label": b"test batch",
        b"labels": [(first_label + i) % 10 for i in range(n)],
        b"data": planes.reshape(n, 3072),
        b"filenames": [b"x.png"] * n,
    }
    return pickle.dumps(batch, protocol=2)


def write_cifar(folder: Path, as_archive: bool, skip: str = ""):
    files = {f"data_batch_{i}": cifar_batch(2, i) for i in range(1, 6)} | {
        "test_batch": cifar_batch(3, 7)
    }
    # Archive order scrambled, as in the official tarball; the reader must sort the batches.
    files = {name: files[name] for name in reversed(files) if name != skip}
    folder.mkdir(parents=True)
    if not as_archive:
        (folder / "cifar-10-batches-py").mkdir()
        for name, body in files.items():
            (folder / "cifar-10-batches-py" / name).write_bytes(body)
        return
    with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))


@pytest.mark.parametrize("as_archive", [True, False])
def test_load_cifar10(tmp_path, as_archive):
    write_cifar(tmp_path / "cifar10", as_archive)
    x, y = load_cifar10(root=tmp_path, verify=False)
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert (x[:, 0] == -1).all() and (x[:, 1] == 1).all()
    assert torch.allclose(
        x[:2, 2, 0, 0], torch.tensor([128 / 127.5 - 1, 129 / 127.5 - 1]), atol=1e-6
    )
    assert y.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    x, y = load_cifar10(root=tmp_path, train=False, verify=False)
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [7, 8, 9]


def test_cifar_cut_short_batch_is_named(tmp_path):
    write_cifar(tmp_path / "cifar10", as_archive=False)
    batch = tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])  # an interrupted extraction
    with pytest.raises(ValueError, match=r"data_batch_3: not a complete CIFAR-10 batch"):
        load_cifar10(root=tmp_path, verify=False)


def test_cifar_extracted_batch_with_too_few_images_is_refused(tmp_path):
    # Extracted files have no published digests: with verify (the default) each batch must hold
    # the published 10,000 images, so a short but well-formed batch is not silently used.
    write_cifar(tmp_path / "cifar10", as_archive=False)  # 2 images a batch
    with pytest.raises(
        ValueError, match=r"data_batch_1: expected the published 10,000 images, got 2"
    ):
        load_cifar10(root=tmp_path)
    with pytest.raises(
        ValueError, match=r"test_batch: expected the published 10,000 images, got 3"
    ):
        load_cifar10(root=tmp_path, train=False)
    assert len(load_cifar10(root=tmp_path, verify=False)[0]) == 10  # files of one's own


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (b"labels", [0, 10], r"data_batch_2: expected labels 0\.\.9, got int64 values 0\.\.10"),
        (b"labels", [0.0, 1.5], r"expected labels 0\.\.9, got float64"),
        (b"data", np.full((2, 3072), 256, np.int64), r"expected pixel values 0\.\.255"),
        (
            b"data",
            np.full((2, 3072), 0.5),
            r"expected pixel values 0\.\.255 \(uint8\), got dtype float64",
        ),
    ],
)
def test_cifar_batch_out_of_range_is_refused(tmp_path, field, value, message):
    write_cifar(tmp_path / "cifar10", as_archive=False)
    path = tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_2"
    batch = pickle.loads(path.read_bytes())
    batch[field] = value
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match=message):
        load_cifar10(root=tmp_path, verify=False)


def test_cifar_archive_missing_a_batch(tmp_path):
    write_cifar(tmp_path / "cifar10", as_archive=True, skip="data_batch_3")
    with pytest.raises(ValueError, match=r"lacks \['cifar-10-batches-py/data_batch_3'\]"):
        load_cifar10(root=tmp_path, verify=False)


def test_cifar_archive_checksum_is_checked(tmp_path):
    write_cifar(tmp_path / "cifar10", as_archive=True)
    archive = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    with pytest.raises(ChecksumError, match=sha256(archive)):
        load_cifar10(root=tmp_path)


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_reader_refuses_pickled_code(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    body = pickle.dumps({b"data": _Payload(), b"labels": []})
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"):
        (folder / name).write_bytes(body)
    with pytest.raises(pickle.UnpicklingError, match=r"posix.getcwd|nt.getcwd|os.getcwd"):
        load_cifar10(root=tmp_path)


# ------------------------------------------------------------------------------------------------
# The dispatcher
# ------------------------------------------------------------------------------------------------


def test_load_dataset_toys_and_glyphs():
    x, labels = load_dataset("swiss-roll", n=300, seed=2)
    assert labels is None and torch.equal(x, toy_2d("swiss-roll", 300, seed=2))
    x, labels = load_dataset("moons")
    assert x.shape == (data.TOY_DEFAULT_N, 2) and labels is None
    x, labels = load_dataset("glyph-digits", n=30, seed=5)
    expected, expected_labels = glyph_digits(30, seed=5)
    assert torch.equal(x, expected) and torch.equal(labels, expected_labels)


def test_load_dataset_real_subsets(tmp_path, monkeypatch):
    write_mnist(tmp_path / "mnist", "train", n=5)
    folder = tmp_path / "mnist"
    table = {
        p.name: RemoteFile(p.name, sha256(p), ("https://example.invalid/",))
        for p in folder.iterdir()
    }
    monkeypatch.setitem(data._REMOTE_FILES, "mnist", table)
    full, full_labels = load_dataset("mnist", root=tmp_path)
    assert full.shape == (5, 1, 28, 28)
    x, labels = load_dataset("mnist", n=3, seed=1, root=tmp_path)
    again, _ = load_dataset("mnist", n=3, seed=1, root=tmp_path)
    assert x.shape == (3, 1, 28, 28) and torch.equal(x, again)
    rows = [int((full == image).all(dim=(1, 2, 3)).nonzero()) for image in x]
    assert len(set(rows)) == 3 and torch.equal(full_labels[rows], labels)
    with pytest.raises(ValueError, match="n: mnist has 5 training images, asked for 6"):
        load_dataset("mnist", n=6, root=tmp_path)


def test_dataset_names():
    assert set(DATASETS) == set(TOY_DATASETS) | {
        "glyph-digits",
        "mnist",
        "fashion-mnist",
        "cifar10",
    }
    assert [is_image_dataset(name) for name in DATASETS] == [
        name not in TOY_DATASETS for name in DATASETS
    ]
    with pytest.raises(ValueError, match=r"unknown data set 'imagenet'.*glyph-digits"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="unknown data set"):
        is_image_dataset("imagenet")
