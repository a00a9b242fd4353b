"""A newcomer's second trial of ``iomface`` (issue 25): batch verification and identification with
one model load, options between positional arguments, LFW's own pairs.txt, store-only commands
that import no Keras, a wrong application secret named as such before any model loads, photos
and serve options checked before the model loads, per-subject versions, subject ids.

Photos: the demo portraits ``run_me.py --samples`` writes (no ``../shared`` needed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from tests.test_cli_usability import loads, pipelines  # noqa: F401  (fixtures)
from tests.test_iom_cli_security import cli, one_error_line, private_file  # noqa: F401  (fixtures)

TOKEN = "Kq7vR2mXp9Lz-tok"
OTHER = "Wd3nF8sQy5Hc-tok"


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """``{name: path}`` of the demo photos (hopper, hopper_copy: the same person; collins) and a
    grey image without a face."""
    sys.path.insert(0, str(REPO))
    try:
        from run_me import SAMPLE_FILES, write_samples
    finally:
        sys.path.remove(str(REPO))
    from arcface.data.images import encode_png

    folder = tmp_path_factory.mktemp("samples")
    paths = write_samples(str(folder))
    out = {name.split(".")[0]: paths[k] for k, name in enumerate(SAMPLE_FILES)}
    out["blank"] = str(folder / "blank.png")
    with open(out["blank"], "wb") as f:
        f.write(encode_png(np.full((240, 240, 3), 128, np.uint8)))
    return out


def enroll(cli, tmp_path, subject, photo, token=TOKEN):
    token_file = private_file(tmp_path / f"{subject}.token", token + "\n")
    rc, out, err = cli("enroll", subject, "--token_file", token_file, photo)   # an option between positionals
    assert rc == 0, err
    return token_file


# ---------------------------------------------------------------------------- batches
def test_verify_and_identify_batches_load_the_model_once(cli, loads, samples, tmp_path):
    enroll(cli, tmp_path, "grace", samples["hopper"])
    enroll(cli, tmp_path, "eileen", samples["collins"], OTHER)
    loads.clear()
    tokens = private_file(tmp_path / "tokens.tsv", f"grace\t{TOKEN}\neileen\t{OTHER}\n")
    batch = tmp_path / "probes.tsv"
    batch.write_text(f"# subject, photo\ngrace\t{samples['hopper_copy']}\ngrace\t{samples['collins']}\n\n"
                     f"eileen\t{samples['collins']}\ngrace\t{samples['blank']}\n")
    rc, out, err = cli("verify", "--batch", batch, "--tokens_file", tokens, "--json")
    assert rc == 1, err                                   # a line failed (no face): exit 1
    result = json.loads(out)
    assert [(r["subject"], r.get("accepted")) for r in result["results"]] == \
        [("grace", True), ("grace", False), ("eileen", True), ("grace", None)]
    assert "no face" in result["results"][3]["error"]
    assert {k: result["summary"][k] for k in ("lines", "accepted", "rejected", "failed")} == \
        {"lines": 4, "accepted": 2, "rejected": 1, "failed": 1}
    assert len(loads) == 1                                # one model load for the whole batch
    rc, out, err = cli("verify", "--batch", batch, "--tokens_file", tokens)
    lines = out.splitlines()
    assert rc == 1 and len(lines) == 5 and lines[0].endswith("accepted") and lines[1].endswith("rejected")
    assert lines[-1].startswith("4 lines: 2 accepted, 1 rejected, 1 failed")
    photos = tmp_path / "photos.txt"
    photos.write_text(f"{samples['hopper_copy']}\n{samples['collins']}\n")
    rc, out, err = cli("identify", "--batch", photos, "--json")
    assert rc == 0, err
    got = json.loads(out)
    assert [[c["subject"] for c in r["candidates"]][:1] for r in got["results"]] == [["grace"], ["eileen"]]
    assert got["summary"]["matched"] == 2 and got["summary"]["failed"] == 0


def test_batch_inputs_are_checked_before_the_model_loads(cli, loads, samples, tmp_path):
    enroll(cli, tmp_path, "grace", samples["hopper"])
    loads.clear()
    tokens = private_file(tmp_path / "tokens.tsv", f"grace\t{TOKEN}\n")
    batch = tmp_path / "b.tsv"
    for text, says in ((f"zoe\t{samples['hopper']}\n", "no token for 1 subject(s) of the batch: zoe"),
                       (f"grace\t{tmp_path / 'gone.jpg'}\n", "gone.jpg: no such file"),
                       (f"grace {samples['hopper']}\n", "line 1"),
                       (f"bad id!\t{samples['hopper']}\n", "'!'")):
        batch.write_text(text)
        rc, _, err = cli("verify", "--batch", batch, "--tokens_file", tokens)
        assert rc == 2 and says in one_error_line(err), err
    rc, _, err = cli("verify", "grace", samples["hopper"], "--batch", batch, "--tokens_file", tokens)
    assert rc == 2 and "--batch takes no SUBJECT, PHOTO" in one_error_line(err)
    batch.write_text(f"grace\t{samples['hopper']}\n")
    rc, _, err = cli("verify", "--batch", batch)
    assert rc == 2 and "needs --tokens_file" in one_error_line(err)
    assert loads == []


# ---------------------------------------------------------------------------- LFW's pairs.txt
def test_verify_pairs_reads_lfw_pairs_txt(cli, loads, samples, tmp_path):
    import shutil

    for person, photos in (("Grace_Hopper", ["hopper", "hopper_copy"]), ("Eileen_Collins", ["collins"])):
        (tmp_path / person).mkdir()
        for k, name in enumerate(photos, 1):
            shutil.copy(samples[name], tmp_path / person / f"{person}_{k:04d}.jpg")   # the decoder reads content
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1\t1\nGrace_Hopper\t1\t2\nGrace_Hopper\t2\tEileen_Collins\t1\n")   # LFW's own format: 1 fold of 1 + 1
    rc, out, err = cli("verify-pairs", pairs, "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert [(os.path.basename(r["photo_a"]), os.path.basename(r["photo_b"]), r["same"], r["accepted"])
            for r in result["results"]] == [("Grace_Hopper_0001.jpg", "Grace_Hopper_0002.jpg", True, True),
                                            ("Grace_Hopper_0002.jpg", "Eileen_Collins_0001.jpg", False, False)]
    assert result["summary"]["tar"] == 1.0 and result["summary"]["far"] == 0.0
    pairs.write_text("1\t1\nGrace_Hopper\t1\t3\nGrace_Hopper\t1\tEileen_Collins\t1\n")
    rc, _, err = cli("verify-pairs", pairs)
    assert rc == 2 and "Grace_Hopper_0003.jpg: no such file" in one_error_line(err)


# ---------------------------------------------------------------------------- checked before loading
def test_a_file_that_is_not_a_photo_is_refused_before_the_model_loads(cli, loads, samples, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("hello\n")
    rc, _, err = cli("compare", samples["hopper"], text)
    assert rc == 2 and "notes.jpg: cannot decode image" in one_error_line(err)
    enroll_token = private_file(tmp_path / "t.token", TOKEN + "\n")
    rc, _, err = cli("enroll", "grace", text, "--token_file", enroll_token)
    assert rc == 2 and "notes.jpg" in one_error_line(err) and not (tmp_path / "iomface.db").exists()
    assert loads == []


def test_serve_options_are_checked_before_the_model_loads(cli, loads, tmp_path):
    rc, _, err = cli("serve")
    assert rc == 2 and "no API key file" in one_error_line(err)
    rc, _, err = cli("serve", "--keys_file", tmp_path / "missing.json")
    assert rc == 2 and "missing.json: no such file" in one_error_line(err)
    rc, out, err = cli("add-key", "ops", "--role", "admin", "--keys_file", tmp_path / "keys.json")
    assert rc == 0, err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc, _, err = cli("serve", "--keys_file", tmp_path / "keys.json", "--port", port, "--db", tmp_path / "s.db")
    assert rc == 2 and f"--port {port}: 127.0.0.1:{port} is already in use" in one_error_line(err)
    assert not (tmp_path / "s.db").exists()               # no database left behind
    assert loads == []


# ---------------------------------------------------------------------------- the secret, the versions
def test_a_wrong_application_secret_is_named_before_the_model_loads(cli, loads, samples, tmp_path):
    token = enroll(cli, tmp_path, "grace", samples["hopper"])
    loads.clear()
    wrong = {"IOMFACE_APP_SECRET": "not-the-app-secret-for-tests"}
    for args in (("list",), ("verify", "grace", samples["hopper_copy"], "--token_file", token)):
        rc, _, err = cli(*args, env=wrong)
        line = one_error_line(err)
        assert rc == 2 and "the application secret does not open this database" in line, line
        assert "IOMFACE_APP_SECRET" in line
    assert loads == []


def test_an_edited_log_entry_is_still_called_tampering(tmp_path):
    """The wrong-secret message is only for a log no entry of which authenticates: one edited
    entry among good ones is named as an edit."""
    import sqlite3

    from iom.errors import StoreError
    from iom.store.sqlite import SQLiteStore
    from tests.test_iom_store import pair

    key = b"k" * 32
    path = tmp_path / "s.db"
    with SQLiteStore(path) as s:
        s.authenticate(key)
        for name in ("a", "b", "c"):
            s.enroll(pair(name))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE events SET at = 'x' WHERE seq = 2")
    with SQLiteStore(path) as s, pytest.raises(StoreError, match="event 2 of the log fails authentication"):
        s.authenticate(key)
    with SQLiteStore(path) as s, pytest.raises(StoreError, match="application secret does not open"):
        s.authenticate(b"w" * 32)


def test_store_only_commands_import_no_keras(cli, loads, samples, tmp_path):
    """list, show, list-keys, set-admin and a revoke proved by the administrator secret: run in a
    fresh interpreter, which never imports Keras, TensorFlow or JAX."""
    enroll(cli, tmp_path, "grace", samples["hopper"])
    admin = private_file(tmp_path / "admin.secret", "an-administrator-secret-1234\n")
    cli("add-key", "ops", "--role", "admin", "--keys_file", tmp_path / "keys.json")
    script = (
        "import json, sys\n"
        "from iom.cli.main import main\n"
        "codes = [main(a) for a in json.loads(sys.argv[1])]\n"
        "heavy = sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules)\n"
        "print(json.dumps({'codes': codes, 'heavy': heavy}))\n")
    commands = [["list"], ["show", "grace"], ["list-keys", "--keys_file", str(tmp_path / "keys.json")],
                ["set-admin", "--new_admin_secret_file", str(admin)],
                ["--admin_secret_file", str(admin), "revoke", "grace", "--expected_version", "1"],
                ["list", "--all"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOMFACE_")}
    env.update(IOMFACE_APP_SECRET="app-secret-for-tests", XDG_STATE_HOME=str(tmp_path / "state"))
    done = subprocess.run([sys.executable, "-c", script, json.dumps(commands)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == {"codes": [0] * len(commands), "heavy": []}, done.stdout + done.stderr
    assert "grace" in done.stdout and "revoked" in done.stdout


def test_expected_version_counts_the_subjects_own_changes(cli, loads, samples, tmp_path):
    """The README's sequence (reissue at version 1, revoke at version 2) with others enrolled first."""
    admin = private_file(tmp_path / "admin.secret", "an-administrator-secret-1234\n")
    for k in range(3):
        enroll(cli, tmp_path, f"person{k}", samples["collins"])
    token = enroll(cli, tmp_path, "grace", samples["hopper"])
    new = private_file(tmp_path / "new.token", OTHER + "\n")
    rc, out, err = cli("show", "grace", "--json")
    assert {t["version"] for t in json.loads(out)} == {1}
    common = ("--admin_secret_file", admin)
    rc, out, err = cli("set-admin", "--new_admin_secret_file", admin)
    assert rc == 0, err
    rc, _, err = cli("reissue", "grace", samples["hopper"], "--new_token_file", new, "--expected_version", "2",
                     *common)
    assert rc == 2 and "at version 1, not the expected 2" in one_error_line(err)
    rc, _, err = cli("reissue", "grace", samples["hopper"], "--new_token_file", new, "--expected_version", "1",
                     *common)
    assert rc == 0, err
    rc, out, err = cli("revoke", "grace", "--expected_version", "2", *common)
    assert rc == 0 and "revoked grace" in out, err
    assert token.exists()


def test_subject_ids_with_shell_or_url_characters_are_refused(cli, loads, samples, tmp_path):
    token = private_file(tmp_path / "t.token", TOKEN + "\n")
    for bad in ("bad id!", "a/b", "x?y", "50%"):
        rc, _, err = cli("enroll", bad, samples["hopper"], "--token_file", token)
        assert rc == 2 and "subject_id" in one_error_line(err)
    assert loads == [] and not (tmp_path / "iomface.db").exists()


def test_serve_runs_tensorflow_ops_on_one_thread_each(cli, monkeypatch, tmp_path):
    """A server's requests run side by side, one core each, so one costly photo cannot take every
    core (bench/alignment_flood.py: another client's p99 x1.3 against x2.4 with TensorFlow's default)."""
    import arcface.cli
    import iom.server.serve

    seen = []
    monkeypatch.setattr(arcface.cli, "import_backend_quietly", lambda: None)
    monkeypatch.setattr(iom.server.serve, "serve", lambda args, request: seen.append(
        os.environ.get("TF_NUM_INTRAOP_THREADS")) or 0)
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    assert cli("add-key", "ops", "--role", "admin", "--keys_file", tmp_path / "keys.json")[0] == 0
    common = ("serve", "--keys_file", tmp_path / "keys.json", "--port", "0")
    assert cli(*common)[0] == 0
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")
    assert cli(*common)[0] == 0 and cli(*common, "--op_threads", "2")[0] == 0
    assert seen == ["1", "3", "2"]
    rc, _, err = cli(*common, "--op_threads", "0")
    assert rc == 2 and "--op_threads must be at least 1" in one_error_line(err)
