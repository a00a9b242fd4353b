"""Embedder, embedding files and pair scoring, against a NumPy reimplementation of a tiny net."""

import os

import cv2
import keras
import numpy as np
import pytest

from arcface.data.images import encode_jpeg, encode_png
from arcface.data.pairs import PairSet
from arcface.embed import Embedder, l2_normalize
from arcface.embeddings_io import list_images, load_embeddings, save_embeddings
from arcface.errors import DataFormatError
from arcface.verification import pair_scores, unique_items

SIZE = 8
HIDDEN = 12
DIM = 5


class TinyNet:
    """Flatten -> Dense(relu) -> Dense, fixed weights; as a Keras model and in NumPy."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.w1 = rng.normal(0, 1 / np.sqrt(SIZE * SIZE * 3 * 255.0), (SIZE * SIZE * 3, HIDDEN)).astype(np.float32)
        self.b1 = rng.normal(0, 0.1, HIDDEN).astype(np.float32)
        self.w2 = rng.normal(0, 1, (HIDDEN, DIM)).astype(np.float32)
        self.b2 = rng.normal(0, 0.1, DIM).astype(np.float32)
        inputs = keras.Input((SIZE, SIZE, 3))
        x = keras.layers.Flatten()(inputs)
        x = keras.layers.Dense(HIDDEN, activation="relu")(x)
        x = keras.layers.Dense(DIM)(x)
        self.model = keras.Model(inputs, x)
        self.model.set_weights([self.w1, self.b1, self.w2, self.b2])

    def numpy(self, images):
        x = np.asarray(images, np.float64).reshape(len(images), -1)
        h = np.maximum(x @ self.w1 + self.b1, 0)
        return h @ self.w2 + self.b2


def normalise(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def net():
    return TinyNet()


def images(n, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- Embedder


@pytest.mark.parametrize("n, batch", [(11, 4), (4, 4), (3, 8), (1, 1)])
def test_embed_arrays_equals_normalised_outputs(net, n, batch):
    x = images(n)
    want = normalise(net.numpy(x))
    got = Embedder(net.model, batch_size=batch, input_size=SIZE).embed_arrays(x)
    assert got.shape == (n, DIM) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)


def test_embed_arrays_padding_does_not_change_results(net):
    x = images(11)
    alone = np.concatenate([Embedder(net.model, 1, SIZE).embed_arrays(x[i:i + 1]) for i in range(11)])
    for batch in (3, 4, 16):
        np.testing.assert_allclose(Embedder(net.model, batch, SIZE).embed_arrays(x), alone,
                                   rtol=1e-5, atol=1e-6, err_msg=f"batch {batch}")


def test_small_batches_are_padded_to_a_power_of_two_only(net):
    """One image costs one row, not batch_size rows; every n up to batch_size (and beyond it)
    gives the reference embeddings."""
    emb = Embedder(net.model, 8, SIZE)
    assert [emb.padded_size(n) for n in range(1, 11)] == [1, 2, 4, 4, 8, 8, 8, 8, 8, 8]
    assert Embedder(net.model, 6, SIZE).padded_size(5) == 6
    seen = []
    forward = emb._predict_fn()
    emb._predict = (net.model, lambda x: seen.append(len(x)) or forward(x))
    for n in range(1, 12):
        x = images(n, seed=20 + n)
        np.testing.assert_allclose(emb.embed_arrays(x), normalise(net.numpy(x)), rtol=1e-5, atol=1e-6)
    assert set(seen) == {1, 2, 4, 8}


def test_embedder_follows_a_replaced_backbone(net):
    emb = Embedder(net.model, 4, SIZE)
    x = images(3)
    np.testing.assert_allclose(emb.embed_arrays(x), normalise(net.numpy(x)), rtol=1e-5, atol=1e-6)
    other = TinyNet(seed=7)
    emb.backbone = other.model
    np.testing.assert_allclose(emb.embed_arrays(x), normalise(other.numpy(x)), rtol=1e-5, atol=1e-6)


def test_embed_arrays_unnormalised_and_float_input(net):
    x = images(6)
    raw = Embedder(net.model, 4, SIZE).embed_arrays(x.astype(np.float32), normalize=False)
    np.testing.assert_allclose(raw, net.numpy(x), rtol=1e-5, atol=1e-5)


def test_flip_sums_the_mirror_embedding(net):
    x = images(7)
    got = Embedder(net.model, 4, SIZE, flip=True).embed_arrays(x)
    want = normalise(net.numpy(x) + net.numpy(x[:, :, ::-1]))  # horizontal mirror (width axis)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # not the vertical mirror, and not the plain embedding (the net is non-linear)
    wrong = normalise(net.numpy(x) + net.numpy(x[:, ::-1]))
    assert np.abs(got - wrong).max() > 1e-3
    assert np.abs(got - normalise(net.numpy(x))).max() > 1e-3


def test_embed_arrays_rejects_bad_shapes_and_handles_empty(net):
    emb = Embedder(net.model, 4, SIZE)
    with pytest.raises(ValueError, match="expected images of shape"):
        emb.embed_arrays(np.zeros((2, SIZE, SIZE), np.uint8))
    with pytest.raises(ValueError, match="expected images of shape"):
        emb.embed_arrays(np.zeros((2, SIZE, SIZE, 1), np.uint8))
    assert emb.embed_arrays(np.zeros((0, SIZE, SIZE, 3), np.uint8)).shape == (0, DIM)
    assert emb.embed_items([]).shape == (0, DIM)


def test_embed_items_on_bytes_and_paths_equals_embed_arrays(net, tmp_path):
    x = images(13, seed=4)
    encoded, paths, decoded = [], [], []
    for i, img in enumerate(x):
        data = encode_png(img) if i % 2 else encode_jpeg(img, quality=90)
        encoded.append(data)
        path = tmp_path / f"{i:02d}.{'png' if i % 2 else 'jpg'}"
        path.write_bytes(data)
        paths.append(str(path) if i % 3 else path)  # str and PathLike
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        decoded.append(rgb)
    decoded = np.stack(decoded)
    np.testing.assert_array_equal(decoded[1::2], x[1::2])  # PNG is lossless
    for flip in (False, True):
        emb = Embedder(net.model, batch_size=3, input_size=SIZE, flip=flip, workers=2)
        want = emb.embed_arrays(decoded)
        np.testing.assert_allclose(emb.embed_items(encoded), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(emb.embed_items(paths), want, rtol=1e-5, atol=1e-6)
        raw = emb.embed_items(encoded, normalize=False)
        np.testing.assert_allclose(l2_normalize(raw), want, rtol=1e-5, atol=1e-6)


def test_embed_items_resizes_to_input_size(net):
    big = np.random.default_rng(3).integers(0, 256, (3, 2 * SIZE, 2 * SIZE, 3), dtype=np.uint8)
    small = np.stack([cv2.resize(im, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for im in big])
    emb = Embedder(net.model, 2, SIZE)
    np.testing.assert_allclose(emb.embed_items([encode_png(im) for im in big]), emb.embed_arrays(small),
                               rtol=1e-5, atol=1e-6)


def test_l2_normalize_keeps_zero_rows():
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


# --------------------------------------------------------------------------- embedding files


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(4, 6)).astype(np.float32)
    names = ["a/1.jpg", "b/2.png", "ç/ü.jpg", "d"]
    path = tmp_path / "sub" / "emb.npz"
    save_embeddings(path, names, emb, labels=[0, 1, 2, 2], class_names=["a", "b", "ç"])
    assert sorted(os.listdir(tmp_path / "sub")) == ["emb.npz"]  # no temporary file left
    got = load_embeddings(path)
    assert list(got.names) == names
    np.testing.assert_array_equal(got.embeddings, emb)
    assert got.embeddings.dtype == np.float32
    np.testing.assert_array_equal(got.labels, [0, 1, 2, 2])
    assert got.labels.dtype == np.int64
    assert list(got.class_names) == ["a", "b", "ç"]
    # a plain np.load works without pickles
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["class_names", "embeddings", "labels", "names"]


def test_save_load_without_labels(tmp_path):
    emb = np.eye(3, dtype=np.float64)
    save_embeddings(tmp_path / "e.npz", ["x", "y", "z"], emb)
    got = load_embeddings(tmp_path / "e.npz")
    assert got.labels is None and got.class_names is None
    np.testing.assert_array_equal(got.embeddings, emb.astype(np.float32))


def test_load_embeddings_of_a_foreign_file_defaults_names(tmp_path):
    # extra arrays (even pickled ones) are ignored; int32 labels are widened
    np.savez(tmp_path / "f.npz", embeddings=np.ones((3, 2)), labels=np.array([2, 0, 1], np.int32),
             extra=np.array([None], dtype=object))
    got = load_embeddings(tmp_path / "f.npz")
    assert list(got.names) == ["0", "1", "2"]
    assert got.labels.dtype == np.int64 and got.labels.tolist() == [2, 0, 1]


def test_save_embeddings_rejects_mismatch(tmp_path):
    with pytest.raises(DataFormatError):
        save_embeddings(tmp_path / "e.npz", ["a", "b"], np.zeros((3, 4)))
    with pytest.raises(DataFormatError):
        save_embeddings(tmp_path / "e.npz", ["a"], np.zeros(4))
    assert not (tmp_path / "e.npz").exists()


@pytest.mark.parametrize("arrays, match", [
    (dict(embeddings=np.array([[1.0, np.nan], [0.0, 1.0]])), "NaN or inf"),
    (dict(embeddings=np.array([[1.0, np.inf]])), "NaN or inf"),
    (dict(embeddings=np.zeros(4)), "non-empty 2-D"),
    (dict(embeddings=np.zeros((2, 3, 4))), "non-empty 2-D"),
    (dict(embeddings=np.zeros((0, 4))), "non-empty 2-D"),
    (dict(vectors=np.zeros((2, 4)), names=np.array(["a", "b"])),
     r"no 'embeddings' array \(found \['names', 'vectors'\]\)"),
    (dict(embeddings=np.zeros((2, 4)), names=np.array(["a"])), "differ in length"),
    (dict(embeddings=np.zeros((2, 4)), labels=np.array([0, 1, 2])), "differ in length"),
    (dict(embeddings=np.array([None, None], dtype=object)), "not a readable .npz"),
    (dict(embeddings=np.zeros((2, 4)), names=np.array(["a", 1], dtype=object)), "not a readable .npz"),
    (dict(embeddings=np.zeros((2, 4)), labels=np.array(["a", "b"])), "'labels' must be a 1-D integer"),
    (dict(embeddings=np.zeros((2, 4)), labels=np.zeros((2, 1), np.int64)), "'labels' must be a 1-D integer"),
])
def test_load_embeddings_rejects_bad_files(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataFormatError, match=match):
        load_embeddings(path)


def test_load_embeddings_rejects_missing_and_garbage(tmp_path):
    with pytest.raises(DataFormatError, match="not a readable .npz"):
        load_embeddings(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataFormatError, match="not a readable .npz"):
        load_embeddings(tmp_path / "junk.npz")
    # a zip whose member is corrupt (bad CRC) is only found out when the array is read
    np.savez(tmp_path / "c.npz", embeddings=np.arange(4000, dtype=np.float32).reshape(100, 40))
    data = bytearray((tmp_path / "c.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "c.npz").write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match="not a readable .npz"):
        load_embeddings(tmp_path / "c.npz")


# --------------------------------------------------------------------------- list_images


def test_list_images_single_file(tmp_path):
    path = tmp_path / "face.png"
    path.write_bytes(encode_png(images(1)[0]))
    assert list_images(path) == (["face.png"], [str(path)], None, None)


def test_list_images_flat_folder(tmp_path):
    for name in ["b.jpg", "a.PNG", "c.jpeg", ".hidden.jpg", "notes.txt", "d.bmp"]:
        (tmp_path / name).write_bytes(b"x")
    names, paths, labels, class_names = list_images(tmp_path)
    assert names == ["a.PNG", "b.jpg", "c.jpeg", "d.bmp"]
    assert paths == [os.path.join(str(tmp_path), n) for n in names]
    assert labels is None and class_names is None


def test_list_images_identity_folder(identity_folder):
    (identity_folder / "README").write_text("ignored")
    names, paths, labels, class_names = list_images(identity_folder)
    assert len(names) == 48 and class_names == [f"id_{c:03d}" for c in range(6)]
    assert names[:2] == ["id_000/000.png", "id_000/001.png"] and names[-1] == "id_005/007.png"
    for name, path, label in zip(names, paths, labels):
        assert path == os.path.join(str(identity_folder), *name.split("/"))
        assert class_names[label] == name.split("/")[0]
    assert labels.dtype == np.int64


def test_list_images_errors(tmp_path):
    with pytest.raises(DataFormatError, match="not found"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("")
    with pytest.raises(DataFormatError, match="no images"):
        list_images(tmp_path / "empty")


# --------------------------------------------------------------------------- verification


def make_pairset(left, right):
    n = len(left)
    return PairSet("set", list(left), list(right), issame=np.arange(n) % 2 == 0, folds=np.arange(n) % 2)


def test_unique_items_dedupes_paths(tmp_path):
    a, b, c = (str(tmp_path / f"{k}.jpg") for k in "abc")
    from pathlib import Path

    ps = make_pairset([a, b, a, Path(c)], [b, c, a, a])
    items, left, right = unique_items(ps)
    assert len(items) == 3 and sorted(os.fspath(i) for i in items) == sorted([a, b, c])
    for i in range(len(ps)):
        assert os.fspath(items[left[i]]) == os.fspath(ps.left[i])
        assert os.fspath(items[right[i]]) == os.fspath(ps.right[i])


def test_unique_items_dedupes_bytes_by_content():
    x = images(3, seed=9)
    enc = [encode_png(im) for im in x]
    copy0 = bytes(bytearray(enc[0]))  # equal content, another object
    ps = make_pairset([enc[0], enc[1], copy0, bytearray(enc[2])], [enc[1], enc[2], enc[2], enc[0]])
    items, left, right = unique_items(ps)
    assert len(items) == 3
    for i in range(len(ps)):
        assert bytes(items[left[i]]) == bytes(ps.left[i])
        assert bytes(items[right[i]]) == bytes(ps.right[i])
    np.testing.assert_array_equal(left, [0, 1, 0, 2])
    np.testing.assert_array_equal(right, [1, 2, 2, 0])


class CountingEmbedder(Embedder):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls = []

    def embed_items(self, items, *a, **k):
        self.calls.append(len(items))
        return super().embed_items(items, *a, **k)


def test_pair_scores_equal_direct_cosine(net):
    x = images(5, seed=12)
    enc = [encode_png(im) for im in x]
    lidx, ridx = [0, 1, 2, 3, 4, 0, 2], [1, 1, 4, 0, 3, 2, 2]
    ps = make_pairset([enc[i] for i in lidx], [enc[i] for i in ridx])
    emb = CountingEmbedder(net.model, 2, SIZE, workers=1)
    scores = pair_scores(emb, ps)
    assert emb.calls == [5]  # each distinct image embedded once
    f = net.numpy(x)
    fl, fr = f[lidx], f[ridx]
    want = np.sum(fl * fr, axis=1) / (np.linalg.norm(fl, axis=1) * np.linalg.norm(fr, axis=1))
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-6)
    assert scores[1] == pytest.approx(1.0, abs=1e-6) and scores[6] == pytest.approx(1.0, abs=1e-6)
