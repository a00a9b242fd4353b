"""The training loader: the seeded batch schedule, the NumPy and tf.data engines, sources."""

import itertools
import os

import cv2
import keras
import numpy as np
import pytest

from arcface.data.folders import ImageFolder, scan_image_folder
from arcface.data.images import encode_png
from arcface.data.loader import (
    BatchSchedule,
    NumpyBatchLoader,
    decode_batch,
    fit_to_size,
    make_tf_dataset,
    make_train_loader,
    open_image_source,
)
from arcface.data.recordio import RecordIODataset, write_insightface_recordio
from arcface.errors import ConfigError, DataFormatError
from tests.conftest import write_identity_folder

# --------------------------------------------------------------------------- BatchSchedule


def epoch_batches(schedule: BatchSchedule, epoch: int) -> list[np.ndarray]:
    first = epoch * schedule.steps_per_epoch
    return [schedule.indices(s) for s in range(first, first + schedule.steps_per_epoch)]


@pytest.mark.parametrize("n, batch", [(50, 8), (48, 8), (9, 9), (100, 7)])
def test_every_epoch_visits_each_sample_at_most_once(n, batch):
    schedule = BatchSchedule(n, batch, seed=5)
    assert schedule.steps_per_epoch == n // batch
    for epoch in range(4):
        batches = epoch_batches(schedule, epoch)
        assert all(len(b) == batch for b in batches)
        seen = np.concatenate(batches)
        # a permutation of the samples, minus the dropped remainder
        assert len(seen) == (n // batch) * batch
        assert len(np.unique(seen)) == len(seen)
        assert seen.min() >= 0 and seen.max() < n


def test_dropped_remainder_changes_between_epochs():
    schedule = BatchSchedule(50, 8, seed=0)  # 2 samples dropped per epoch
    dropped = []
    for epoch in range(10):
        seen = np.concatenate(epoch_batches(schedule, epoch))
        dropped.append(frozenset(set(range(50)) - set(seen.tolist())))
    assert all(len(d) == 2 for d in dropped)
    assert len(set(dropped)) > 1  # not always the same samples left out


def test_epochs_differ_and_seeds_matter():
    a = BatchSchedule(64, 8, seed=1)
    e0, e1 = np.concatenate(epoch_batches(a, 0)), np.concatenate(epoch_batches(a, 1))
    assert not np.array_equal(e0, e1)
    assert sorted(e0) == sorted(e1) == list(range(64))  # both full permutations

    same = BatchSchedule(64, 8, seed=1)
    other = BatchSchedule(64, 8, seed=2)
    steps = range(0, 30)
    full = [a.indices(s) for s in steps]
    assert all(np.array_equal(x, same.indices(s)) for x, s in zip(full, steps))
    assert not all(np.array_equal(x, other.indices(s)) for x, s in zip(full, steps))


def test_schedule_matches_the_documented_permutation():
    # epoch e is default_rng((seed, e)).permutation(n), cut into consecutive batches
    schedule = BatchSchedule(30, 4, seed=7)
    for epoch in (0, 3):
        order = np.random.default_rng((7, epoch)).permutation(30)
        for k, got in enumerate(epoch_batches(schedule, epoch)):
            np.testing.assert_array_equal(got, order[4 * k:4 * k + 4])


def test_resumed_schedule_equals_full_run():
    full = BatchSchedule(50, 8, seed=3)
    reference = [full.indices(s).copy() for s in range(40)]
    for start in (0, 5, 6, 13, 39):  # mid-epoch, epoch boundary, last step
        resumed = BatchSchedule(50, 8, seed=3)
        for s in range(start, 40):
            np.testing.assert_array_equal(resumed.indices(s), reference[s], err_msg=f"start {start} step {s}")
    # random access (going back an epoch) gives the same batches as sequential access
    jumpy = BatchSchedule(50, 8, seed=3)
    for s in [30, 2, 17, 2, 39, 0]:
        np.testing.assert_array_equal(jumpy.indices(s), reference[s])


def test_schedule_rejects_bad_sizes():
    with pytest.raises(ConfigError, match="batch_size"):
        BatchSchedule(10, 0)
    with pytest.raises(DataFormatError, match="fewer than one batch"):
        BatchSchedule(5, 8)


# --------------------------------------------------------------------------- NumpyBatchLoader


def reference_batch(paths, labels, idx, size=None):
    """Decode the scheduled files directly with cv2 (BGR -> RGB), no iomface code."""
    images = []
    for i in idx:
        img = cv2.cvtColor(cv2.imread(paths[int(i)], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        if size is not None and img.shape[:2] != (size, size):
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        images.append(img)
    return np.stack(images), np.asarray(labels)[idx]


def assert_batches_equal(got, want):
    assert len(got) == len(want)
    for k, ((gi, gl), (wi, wl)) in enumerate(zip(got, want)):
        assert gi.dtype == np.uint8 and gl.dtype == np.int32, (gi.dtype, gl.dtype)
        np.testing.assert_array_equal(gl, wl, err_msg=f"labels of batch {k}")
        np.testing.assert_array_equal(gi, wi, err_msg=f"pixels of batch {k}")


@pytest.mark.parametrize("workers", [1, 3])
def test_numpy_loader_equals_direct_decoding(identity_folder, workers):
    source = scan_image_folder(identity_folder)  # 48 images, 32x32
    schedule = BatchSchedule(len(source), 8, seed=11)
    loader = NumpyBatchLoader(source, schedule, 0, 14, input_size=32, workers=workers)
    assert len(loader) == 14
    got = list(loader)
    want = [reference_batch(source.paths, source.labels, schedule.indices(s)) for s in range(14)]
    assert_batches_equal(got, want)
    # the labels are those of the folders the files sit in
    for (_, labels), s in zip(got, range(14)):
        folders = [os.path.basename(os.path.dirname(source.paths[i])) for i in schedule.indices(s)]
        assert [source.class_names[c] for c in labels] == folders


def test_numpy_loader_independent_of_workers_and_prefetch(identity_folder):
    source = scan_image_folder(identity_folder)
    runs = []
    for workers, prefetch in [(1, 1), (3, None), (2, 7)]:
        schedule = BatchSchedule(len(source), 8, seed=2)
        runs.append(list(NumpyBatchLoader(source, schedule, 0, 13, 32, workers, prefetch)))
    for other in runs[1:]:
        assert_batches_equal(other, runs[0])


def test_numpy_loader_resume_gives_the_same_tail(identity_folder):
    source = scan_image_folder(identity_folder)
    full = list(NumpyBatchLoader(source, BatchSchedule(len(source), 8, 4), 0, 15, 32, 2))
    for start in (4, 6, 11):
        tail = list(NumpyBatchLoader(source, BatchSchedule(len(source), 8, 4), start, 15, 32, 3))
        assert_batches_equal(tail, full[start:])


def test_numpy_loader_stop_step_and_endless(identity_folder):
    source = scan_image_folder(identity_folder)
    schedule = BatchSchedule(len(source), 8, 0)
    assert len(list(NumpyBatchLoader(source, schedule, 3, 8, 32, 2))) == 5
    assert list(NumpyBatchLoader(source, schedule, 8, 8, 32, 2)) == []
    endless = NumpyBatchLoader(source, schedule, 0, None, 32, 2)
    with pytest.raises(TypeError):
        len(endless)
    # an endless loader keeps going past the end of an epoch (6 steps) with the schedule
    got = list(itertools.islice(iter(endless), 14))
    want = [reference_batch(source.paths, source.labels, schedule.indices(s)) for s in range(14)]
    assert_batches_equal(got, want)


def test_numpy_loader_load_step_equals_iteration(identity_folder):
    source = scan_image_folder(identity_folder)
    schedule = BatchSchedule(len(source), 8, 9)
    loader = NumpyBatchLoader(source, schedule, 0, 9, 32, 2)
    assert_batches_equal([loader.load_step(s) for s in range(9)], list(loader))


def test_numpy_loader_resizes_to_input_size(tmp_path):
    root = write_identity_folder(tmp_path / "big", n_classes=3, per_class=4, size=40)
    source = scan_image_folder(root)
    schedule = BatchSchedule(len(source), 4, 0)
    got = list(NumpyBatchLoader(source, schedule, 0, 3, input_size=24, workers=2))
    want = [reference_batch(source.paths, source.labels, schedule.indices(s), size=24) for s in range(3)]
    assert got[0][0].shape == (4, 24, 24, 3)
    assert_batches_equal(got, want)


def test_make_train_loader_engines(identity_folder):
    source = scan_image_folder(identity_folder)
    loader = make_train_loader(source, 8, seed=1, start_step=2, stop_step=5, input_size=32,
                               workers=2, engine="numpy")
    assert isinstance(loader, NumpyBatchLoader) and len(loader) == 3
    schedule = BatchSchedule(len(source), 8, 1)
    want = [reference_batch(source.paths, source.labels, schedule.indices(s)) for s in range(2, 5)]
    assert_batches_equal(list(loader), want)
    auto = make_train_loader(source, 8, stop_step=1, input_size=32, workers=1)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        assert isinstance(auto, tf.data.Dataset)
    else:
        assert isinstance(auto, NumpyBatchLoader)
    with pytest.raises(ConfigError, match="unknown loader engine"):
        make_train_loader(source, 8, engine="torch")


# --------------------------------------------------------------------------- tf.data engine


def tf_only():
    if keras.backend.backend() != "tensorflow":
        pytest.skip(f"make_tf_dataset is the TensorFlow-backend engine; backend is {keras.backend.backend()}")


def test_tf_dataset_equals_numpy_loader(identity_folder):
    tf_only()
    source = scan_image_folder(identity_folder)
    schedule = BatchSchedule(len(source), 8, seed=6)
    numpy_batches = list(NumpyBatchLoader(source, schedule, 0, 14, 32, 2))
    tf_batches = list(make_tf_dataset(source, BatchSchedule(len(source), 8, 6), 0, 14, 32).as_numpy_iterator())
    assert_batches_equal(tf_batches, numpy_batches)
    # a resumed tf.data pipeline equals the tail of the full one
    tail = list(make_tf_dataset(source, BatchSchedule(len(source), 8, 6), 9, 14, 32).as_numpy_iterator())
    assert_batches_equal(tail, numpy_batches[9:])


def test_tf_dataset_decodes_jpeg_like_opencv(tmp_path):
    tf_only()
    # smooth JPEGs (enlarged 7x7 patterns, 4:2:0 chroma): the IDCT and chroma upsampling
    # must match OpenCV's for both engines to feed the same pixels
    rng = np.random.default_rng(5)
    root = tmp_path / "jpegs"
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for k in range(8):
            img = cv2.resize(rng.integers(0, 256, (7, 7, 3)).astype(np.uint8), (32, 32),
                             interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(root / f"c{c}" / f"{k}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    source = scan_image_folder(root)
    numpy_batches = list(NumpyBatchLoader(source, BatchSchedule(len(source), 8, 0), 0, 4, 32, 2))
    want = [reference_batch(source.paths, source.labels, BatchSchedule(len(source), 8, 0).indices(s))
            for s in range(4)]
    assert_batches_equal(numpy_batches, want)
    tf_batches = list(make_tf_dataset(source, BatchSchedule(len(source), 8, 0), 0, 4, 32).as_numpy_iterator())
    assert_batches_equal(tf_batches, numpy_batches)


def test_tf_dataset_equals_numpy_loader_on_recordio(tmp_path, identity_folder):
    tf_only()
    folder = scan_image_folder(identity_folder)
    write_insightface_recordio(tmp_path / "rec", [folder.read_bytes(i) for i in range(len(folder))],
                               folder.labels.tolist(), image_size=(32, 32))
    source = open_image_source(tmp_path / "rec")
    assert isinstance(source, RecordIODataset) and not isinstance(source, ImageFolder)
    numpy_batches = list(NumpyBatchLoader(source, BatchSchedule(len(source), 8, 1), 0, 7, 32, 2))
    tf_batches = list(make_tf_dataset(source, BatchSchedule(len(source), 8, 1), 0, 7, 32).as_numpy_iterator())
    assert_batches_equal(tf_batches, numpy_batches)


# --------------------------------------------------------------------------- sources


def shuffled_recordio(tmp_path, identity_folder):
    """A RecordIO set written from the identity folder in a shuffled order; returns the
    dataset and, for each record, the original file and label it must hold."""
    folder = scan_image_folder(identity_folder)
    perm = np.random.default_rng(0).permutation(len(folder))
    images = [folder.read_bytes(int(i)) for i in perm]
    labels = folder.labels[perm]
    out = tmp_path / "recset"
    write_insightface_recordio(out, images, labels.tolist(), image_size=(32, 32))
    # the writer stores images sorted (stably) by label
    order = np.argsort(labels, kind="stable")
    expected_paths = [folder.paths[int(perm[j])] for j in order]
    return out, expected_paths, labels[order]


def test_open_image_source_dispatch(tmp_path, identity_folder):
    out, _, _ = shuffled_recordio(tmp_path, identity_folder)
    assert isinstance(open_image_source(out), RecordIODataset)
    assert isinstance(open_image_source(str(out / "train.rec")), RecordIODataset)
    folder = open_image_source(identity_folder)
    assert isinstance(folder, ImageFolder) and len(folder) == 48 and folder.num_classes == 6
    with pytest.raises(DataFormatError):
        open_image_source(tmp_path / "does_not_exist")


def test_numpy_loader_reads_recordio(tmp_path, identity_folder):
    out, expected_paths, expected_labels = shuffled_recordio(tmp_path, identity_folder)
    source = open_image_source(out)
    assert len(source) == 48 and source.num_classes == 6
    np.testing.assert_array_equal(source.labels, expected_labels)
    schedule = BatchSchedule(len(source), 8, seed=3)
    got = list(NumpyBatchLoader(source, schedule, 0, 10, 32, 3))
    want = [reference_batch(expected_paths, expected_labels, schedule.indices(s)) for s in range(10)]
    assert_batches_equal(got, want)


# --------------------------------------------------------------------------- fit_to_size


def random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_fit_to_size_keeps_an_image_of_the_right_size():
    img = random_image(32, 32)
    np.testing.assert_array_equal(fit_to_size(img, 32), img)


@pytest.mark.parametrize("h, w, size, interp", [
    (40, 40, 32, cv2.INTER_AREA),      # shrink: area averaging
    (130, 120, 112, cv2.INTER_AREA),   # non-square input becomes square
    (20, 20, 32, cv2.INTER_LINEAR),    # enlarge: bilinear
])
def test_fit_to_size_resizes(h, w, size, interp):
    img = random_image(h, w, seed=h)
    out = fit_to_size(img, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, cv2.resize(img, (size, size), interpolation=interp))


def test_fit_to_size_area_shrink_by_two_is_the_block_mean():
    img = random_image(64, 64, seed=3).astype(np.float64)
    out = fit_to_size(img.astype(np.uint8), 32)
    block_mean = img.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
    assert np.abs(out - block_mean).max() <= 0.5 + 1e-9


@pytest.mark.parametrize("h, size, big", [(112, 112, 128), (150, 112, 128), (32, 32, 37), (64, 56, 64)])
def test_fit_to_size_center_crop_geometry(h, size, big):
    assert big == int(round(size * 128 / 112))
    img = random_image(h, h, seed=size)
    out = fit_to_size(img, size, center_crop=True)
    assert out.shape == (size, size, 3)
    resized = cv2.resize(img, (big, big), interpolation=cv2.INTER_AREA)
    off = (big - size) // 2
    np.testing.assert_array_equal(out, resized[off:off + size, off:off + size])


def test_center_crop_of_a_centred_square_keeps_it_centred():
    # a white square in the middle stays in the middle after resize+crop
    img = np.zeros((112, 112, 3), np.uint8)
    img[40:72, 40:72] = 255
    out = fit_to_size(img, 112, center_crop=True).max(axis=2) > 127
    rows, cols = np.nonzero(out)
    # 128/112 scaling: the square grows from 32 to ~36.6 pixels, centre at ~55.5
    assert abs(rows.mean() - 55.5) <= 1 and abs(cols.mean() - 55.5) <= 1
    assert 35 <= rows.max() - rows.min() + 1 <= 38


def test_decode_batch_accepts_bytes_and_paths(identity_folder):
    folder = scan_image_folder(identity_folder)
    raw = [cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB) for p in folder.paths[:5]]
    items = [folder.paths[0], encode_png(raw[1]), folder.paths[2], folder.read_bytes(3), encode_png(raw[4])]
    out = decode_batch(items, 32)
    np.testing.assert_array_equal(out, np.stack(raw))
    crop = decode_batch(items, 32, center_crop=True)
    np.testing.assert_array_equal(crop, np.stack([fit_to_size(r, 32, True) for r in raw]))
