"""The ``iomface`` command as a person uses it (issue 13): warm and batch modes (compare,
verify-pairs, enroll --from-folder) with one model load, operating points with their expected
TAR/FAR, checks before any model loads, no database created by a failed or read-only command,
options after the command, per-command help, exit codes 0/1/2, quiet output.

Real faces: aligned LFW crops from ../shared/data (skipped, saying so, where it is absent)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys

import pytest

from tests.conftest import REPO, shared_data
from tests.test_iom_cli_security import cli, one_error_line, private_file  # noqa: F401  (fixtures)

TOKEN = "Kq7vR2mXp9Lz-tok"


@pytest.fixture(scope="module")
def pipelines():
    """Loaded pipelines shared by this module's tests (a CLI load costs seconds)."""
    return {}


@pytest.fixture
def loads(monkeypatch, pipelines):
    """Counts ``Pipeline.from_pretrained`` calls (each is one model load) and serves cached
    pipelines, so a test can assert how many loads a command made."""
    from iom.service.pipeline import Pipeline

    real = Pipeline.from_pretrained.__func__
    calls = []

    def counting(cls, name=None, align=True, **kw):
        from iom.defaults import DEFAULT_HASHER

        key = (name or DEFAULT_HASHER, align)
        calls.append(key)
        if key not in pipelines:
            pipelines[key] = real(cls, *key)
        return pipelines[key]

    monkeypatch.setattr(Pipeline, "from_pretrained", classmethod(counting))
    return calls


@pytest.fixture(scope="module")
def lfw():
    """``(genuine pairs, impostor pairs)`` of aligned LFW crops (paths), from pairs.txt."""
    root = shared_data("lfw_112")
    lines = (root / "pairs.txt").read_text().splitlines()[1:]
    genuine, impostor = [], []
    for line in lines:
        f = line.split("\t")
        if len(f) == 3:
            genuine.append((root / f[0] / f"{f[0]}_{int(f[1]):04d}.jpg", root / f[0] / f"{f[0]}_{int(f[2]):04d}.jpg"))
        else:
            impostor.append((root / f[0] / f"{f[0]}_{int(f[1]):04d}.jpg", root / f[2] / f"{f[2]}_{int(f[3]):04d}.jpg"))
    return genuine, impostor


def calibration():
    from arcface.pretrained import MODELS_DIR
    from iom.defaults import DEFAULT_HASHER

    with open(os.path.join(MODELS_DIR, DEFAULT_HASHER, "calibration.json")) as f:
        return json.load(f)


# ---------------------------------------------------------------------------- compare
def test_compare_prints_similarity_decision_and_expected_rates(cli, loads, lfw):
    from iom.service.calibration import select_operating_point

    (a, b), (c, d) = lfw[0][1], lfw[1][0]
    rc, out, err = cli("compare", a, b, "--aligned", "--json", env={"IOMFACE_APP_SECRET": None})
    assert rc == 0, err                                                      # accepted: exit 0
    same = json.loads(out)
    point = select_operating_point(calibration())
    assert same["accepted"] is True and 0 <= same["similarity"] <= 1
    assert same["operating_point"] == point.to_dict()
    assert same["operating_point"]["expected_tar"] is not None
    rc, out, err = cli("compare", c, d, "--aligned", env={"IOMFACE_APP_SECRET": None})
    assert rc == 1, err                                                      # rejected: exit 1
    assert out.startswith(f"not the same person at FAR {point.far_target:g}: similarity ")   # not a finding of two people
    assert "below the threshold" in out and "expected TAR" in out
    # the similarity is the fraction of agreeing groups of the two codes (training key)
    from iom.service.pipeline import Pipeline

    pipeline = Pipeline.from_pretrained(align=False)
    codes = pipeline.hasher.encode(pipeline.embed_photos([str(a), str(b)]), None)
    assert same["similarity"] == float((codes[0] == codes[1]).mean())
    assert len(loads) == 3


def test_compare_at_other_operating_points(cli, loads, lfw):
    a, b = lfw[0][1]
    cal = calibration()
    fars = sorted(p["far"] for p in cal.get("operating_points", [{"far": cal["far"]}]))
    for far in fars:
        rc, out, err = cli("compare", a, b, "--aligned", "--json", "--far", str(far))
        assert rc in (0, 1), err
        got = json.loads(out)["operating_point"]
        assert got["far_target"] == pytest.approx(far)
        assert got["threshold"] == next(p["threshold"] for p in cal.get("operating_points", [cal])
                                        if p.get("far") == pytest.approx(far))
    rc, out, err = cli("compare", a, b, "--aligned", "--json", "--threshold", "1.0")
    result = json.loads(out)
    assert rc == 1 and result["accepted"] is False and result["operating_point"]["far_target"] is None
    assert result["operating_point"]["threshold"] == 1.0


@pytest.mark.parametrize("args, says", [
    (["--far", "0.123"], "no operating point at FAR 0.123"),
    (["--far", "2"], "--far must be a FAR in (0, 1)"),
    (["--threshold", "1.5"], "--threshold must be a similarity in [0, 1]"),
    (["--far", "1e-3", "--threshold", "0.3"], "not both"),
])
def test_bad_operating_point_is_refused_before_the_model_loads(cli, loads, lfw, args, says):
    a, b = lfw[0][1]
    rc, _, err = cli("compare", a, b, "--aligned", *args)
    assert rc == 2 and says in one_error_line(err)
    assert loads == []


def test_compare_refuses_a_photo_that_is_not_an_aligned_crop(cli, loads, tmp_path):
    raw = sorted(shared_data("raw", "lfw").rglob("*.jpg"))[0]
    rc, _, err = cli("compare", raw, raw, "--aligned")
    line = one_error_line(err)
    assert rc == 2 and "250x250" in line and "not an aligned 112x112" in line and "leave out --aligned" in line
    rc, _, err = cli("compare", raw, tmp_path / "missing.jpg")
    assert rc == 2 and "missing.jpg: no such file" in one_error_line(err)
    assert loads == []


# ---------------------------------------------------------------------------- verify-pairs
def test_verify_pairs_twenty_verifications_in_one_model_load(cli, loads, lfw, tmp_path):
    genuine, impostor = lfw
    rows = [(a, b, "1") for a, b in genuine[:10]] + [(a, b, "0") for a, b in impostor[:10]]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("# twenty LFW pairs\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in rows))
    rc, out, err = cli("verify-pairs", pairs, "--aligned", "--json", env={"IOMFACE_APP_SECRET": None})
    assert rc == 0, err
    assert loads == [(loads[0][0], False)]                                   # one model load for 20
    result = json.loads(out)
    assert len(result["results"]) == 20 and all("similarity" in r for r in result["results"])
    s = result["summary"]
    assert (s["pairs"], s["compared"], s["failed"], s["genuine"], s["impostor"]) == (20, 20, 0, 10, 10)
    accepted = [r["accepted"] for r in result["results"]]
    assert s["tar"] == sum(accepted[:10]) / 10 and s["far"] == sum(accepted[10:]) / 10
    assert s["accepted"] == sum(accepted)
    threshold = s["operating_point"]["threshold"]
    assert all(r["accepted"] == (r["similarity"] >= threshold) for r in result["results"])
    # the same pairs through compare give the same similarities
    rc, out, _ = cli("compare", rows[3][0], rows[3][1], "--aligned", "--json")
    assert json.loads(out)["similarity"] == result["results"][3]["similarity"]
    # human output: a line per pair and the summary
    rc, out, err = cli("verify-pairs", pairs, "--aligned")
    lines = out.strip().splitlines()
    assert rc == 0 and len(lines) == 22 and lines[20].startswith("20 pairs: 20 compared")
    assert lines[21].startswith("measured on this list: TAR ")


def test_verify_pairs_relative_paths_and_a_failing_photo(cli, loads, lfw, tmp_path):
    import shutil

    a, b = lfw[0][0]
    shutil.copy(a, tmp_path / "a.jpg")
    shutil.copy(b, tmp_path / "b.jpg")
    (tmp_path / "blank.png").write_bytes(__import__("cv2").imencode(".png", __import__("numpy").zeros(
        (112, 112, 3), "uint8"))[1].tobytes())
    (tmp_path / "list").mkdir()
    pairs = tmp_path / "list" / "pairs.txt"
    pairs.write_text("../a.jpg ../b.jpg same\n../a.jpg ../blank.png\n")     # relative to the file's folder
    rc, out, err = cli("verify-pairs", pairs, "--json")                       # MTCNN: no face in blank.png
    result = json.loads(out)
    assert rc == 1, err                                                       # one pair failed
    assert "similarity" in result["results"][0] and "error" in result["results"][1]
    assert "blank.png" in result["results"][1]["error"]
    assert result["summary"]["failed"] == 1 and result["summary"]["compared"] == 1


@pytest.mark.parametrize("content, says", [
    ("a.jpg\n", "line 1: expected 'PHOTO_A PHOTO_B [same|diff]'"),
    ("# only a comment\n", "no pairs in it"),
    ("a.jpg b.jpg maybe\n", "line 1: third column 'maybe' is not a label"),
    ("a.jpg nothere.jpg\n", "nothere.jpg: no such file"),
])
def test_verify_pairs_bad_file_is_refused_before_the_model_loads(cli, loads, lfw, tmp_path, content, says):
    import shutil

    shutil.copy(lfw[0][0][0], tmp_path / "a.jpg")
    shutil.copy(lfw[0][0][1], tmp_path / "b.jpg")
    (tmp_path / "pairs.txt").write_text(content)
    rc, _, err = cli("verify-pairs", tmp_path / "pairs.txt")
    assert rc == 2 and says in one_error_line(err)
    assert loads == []


# ---------------------------------------------------------------------------- enroll --from-folder
def _people(root, lfw, n=3):
    import shutil

    genuine, _ = lfw
    names = []
    for a, b in genuine:
        name = a.parent.name
        if len(names) == n:
            break
        if (root / name).exists():
            continue
        (root / name).mkdir(parents=True)
        shutil.copy(a, root / name / a.name)
        names.append((name, b))
    return names


def test_enroll_from_folder_writes_private_tokens_that_verify(cli, loads, lfw, tmp_path):
    people = _people(tmp_path / "people", lfw)
    rc, out, err = cli("enroll", "--from-folder", tmp_path / "people", "--new_tokens_file", "tokens.tsv",
                       "--aligned", "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["summary"] == {"subjects": 3, "enrolled": 3, "failed": 0, "new_tokens_file": "tokens.tsv"}
    assert [r["subject"] for r in result["results"]] == sorted(n for n, _ in people)
    assert len(loads) == 1
    tokens = dict(line.split("\t") for line in (tmp_path / "tokens.tsv").read_text().splitlines())
    assert stat.S_IMODE(os.stat(tmp_path / "tokens.tsv").st_mode) == 0o600
    name, probe = people[0]
    rc, out, err = cli("verify", name, probe, "--aligned", "--token_file", "-", stdin=tokens[name] + "\n")
    assert rc == 0 and out.startswith(f"{name}: accepted"), (out, err)
    other = people[1][0]
    rc, out, err = cli("verify", other, probe, "--aligned", "--token_file", "-", stdin=tokens[other] + "\n")
    assert rc == 1 and out.startswith(f"{other}: rejected"), (out, err)
    # enrolling the folder again: every subject already enrolled -> nothing enrolled, exit 2,
    # and the tokens file is never overwritten
    rc, _, err = cli("enroll", "--from-folder", tmp_path / "people", "--new_tokens_file", "tokens.tsv", "--aligned")
    assert rc == 2 and "not overwritten" in one_error_line(err)


def test_enroll_from_folder_with_a_tokens_file_and_a_failing_subject(cli, loads, lfw, tmp_path):
    import numpy as np
    import cv2

    people = _people(tmp_path / "people", lfw, n=2)
    (tmp_path / "people" / "zz_noface").mkdir()
    cv2.imwrite(str(tmp_path / "people" / "zz_noface" / "x.png"), np.zeros((112, 112, 3), np.uint8))
    table = "".join(f"{n}\t{TOKEN}{i}\n" for i, (n, _) in enumerate(people))
    private_file(tmp_path / "tokens.tsv", table)
    rc, _, err = cli("enroll", "--from-folder", tmp_path / "people", "--tokens_file", "tokens.tsv")
    assert rc == 2 and "no token for 1 subject(s)" in one_error_line(err) and loads == []
    private_file(tmp_path / "tokens.tsv", table + f"zz_noface\t{TOKEN}z\n")
    rc, out, err = cli("enroll", "--from-folder", tmp_path / "people", "--tokens_file", "tokens.tsv")
    assert rc == 1, err                                                       # one subject failed
    lines = out.strip().splitlines()
    assert lines[-1] == "3 subjects: 2 enrolled, 1 failed" and lines[2].startswith("zz_noface: error: ")
    rc, out, _ = cli("list")
    assert out.split() == sorted(n for n, _ in people)


@pytest.mark.parametrize("args, says", [
    (["--from-folder", "people"], "needs one of --tokens_file"),
    (["--from-folder", "people", "--token_file", "t"], "use --tokens_file"),
    (["alice", "x.jpg", "--from-folder", "people"], "takes no SUBJECT"),
    (["--from-folder", "nowhere", "--new_tokens_file", "n.tsv"], "nowhere: not a folder"),
    (["alice", "x.jpg"], "needs --token_file"),
])
def test_enroll_usage_errors(cli, loads, tmp_path, args, says):
    (tmp_path / "people").mkdir()
    rc, _, err = cli("enroll", *args)
    assert rc == 2 and says in one_error_line(err)
    assert loads == [] and not (tmp_path / "iomface.db").exists()


# ---------------------------------------------------------------------------- no side effects
@pytest.mark.parametrize("command", [["list"], ["list", "--all"], ["show", "alice"],
                                     ["verify", "alice", "p.jpg", "--token_file", "t"],
                                     ["identify", "p.jpg"], ["revoke", "alice"]])
def test_read_commands_never_create_a_database(cli, loads, tmp_path, command):
    rc, _, err = cli(*command, "--db", "typo.db")
    assert rc == 2 and "no template database at typo.db" in one_error_line(err)
    assert not (tmp_path / "typo.db").exists() and loads == []


def test_failed_enrolment_leaves_no_database_and_no_witness(cli, loads, tmp_path):
    import numpy as np
    import cv2

    private_file(tmp_path / "token", TOKEN + "\n")
    cv2.imwrite(str(tmp_path / "noface.png"), np.zeros((200, 200, 3), np.uint8))
    rc, _, err = cli("enroll", "alice", "noface.png", "--token_file", "token", "--db", "new/fresh.db")
    assert rc == 2 and "the folder" in one_error_line(err) and "does not exist" in one_error_line(err)
    assert not (tmp_path / "new").exists() and loads == []                   # a mistyped folder: refused first
    (tmp_path / "new").mkdir()
    rc, _, err = cli("enroll", "alice", "noface.png", "--token_file", "token", "--db", "new/fresh.db")
    assert rc == 2 and "no face" in one_error_line(err)
    assert os.listdir(tmp_path / "new") == []                                # no database, no -wal/-shm
    assert not list((tmp_path / "state").rglob("witness-*"))
    rc, _, err = cli("enroll", "alice", "noface.png", "--token_file", "token", env={"IOMFACE_APP_SECRET": None})
    assert rc == 2 and "IOMFACE_APP_SECRET" in one_error_line(err)           # no secret: nothing written
    assert not (tmp_path / "iomface.db").exists() and len(loads) == 1


def test_weak_token_is_refused_before_the_model_loads(cli, loads, lfw, tmp_path):
    private_file(tmp_path / "token", "1234\n")
    rc, _, err = cli("enroll", "alice", lfw[0][0][0], "--token_file", "token", "--aligned")
    assert rc == 2 and "too weak" in one_error_line(err)
    assert loads == [] and not (tmp_path / "iomface.db").exists()


# ---------------------------------------------------------------------------- conventions
def test_options_after_the_command_and_list_all_and_reissue_after_revoke(cli, loads, lfw, tmp_path):
    a, b = lfw[0][0]
    private_file(tmp_path / "token", TOKEN + "\n")
    private_file(tmp_path / "token2", TOKEN + "-2\n")
    private_file(tmp_path / "admin", "admin-secret-for-tests")
    rc, out, err = cli("enroll", "alice", a, "--token_file", "token", "--aligned", "--db", "t.db")
    assert rc == 0 and out.strip() == "enrolled alice: verification template #1, identification template #2", err
    rc, out, err = cli("--db", "t.db", "verify", "alice", b, "--token_file", "token", "--aligned", "--json")
    assert rc == 0 and json.loads(out)["accepted"] is True, err               # options on both sides
    assert cli("set-admin", "--new_admin_secret_file", "admin", "--db", "t.db", "--aligned")[0] == 0
    rc, out, err = cli("revoke", "alice", "--admin_secret_file", "admin", "--db", "t.db")
    assert rc == 0 and "enroll again" in out, err
    rc, _, err = cli("reissue", "alice", a, "--new_token_file", "token2", "--admin_secret_file", "admin",
                     "--db", "t.db", "--aligned")
    line = one_error_line(err)
    assert rc == 1 and "were revoked" in line and "iomface enroll alice" in line
    rc, out, err = cli("list", "--all", "--db", "t.db", "--json")
    (row,) = json.loads(out)
    assert rc == 0 and row["subject"] == "alice" and row["status"] == "revoked" and row["templates"] == 0
    assert row["enrolled_at"] < row["revoked_at"]
    rc, out, _ = cli("list", "--all", "--db", "t.db")
    assert re.fullmatch(r"alice\s+revoked\s+enrolled \S+\s+revoked \S+", out.strip()), out
    rc, out, _ = cli("list", "--db", "t.db")
    assert rc == 0 and out.strip() == "(no enrolled subject)"
    rc, _, err = cli("show", "bob", "--db", "t.db")
    assert rc == 1 and "never enrolled" in one_error_line(err)               # not found: exit 1
    rc, out, _ = cli("enroll", "alice", a, "--token_file", "token2", "--aligned", "--db", "t.db")
    assert rc == 0                                                           # enrolled again
    rc, out, _ = cli("identify", b, "--aligned", "--db", "t.db", "--json")
    result = json.loads(out)
    assert rc == 0 and result["candidates"] == [{"subject": "alice", "rank": 1}]
    point = result["operating_point"]                                       # 1:N, with its expected TAR
    assert point["gallery_size"] == 1 and point["fpir_target"] == 0.01 and 0 < point["expected_tar"] <= 1
    assert point["threshold"] >= calibration()["threshold"]
    rc, out, _ = cli("identify", lfw[1][0][1], "--aligned", "--db", "t.db")
    assert rc == 1 and out.startswith("no match (1:N threshold ")           # no candidate: exit 1
    assert "expected TAR" in out


def test_every_command_has_full_help_with_examples():
    from iom.cli.parser import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in COMMANDS:
        text = sub.choices[name].format_help()
        assert "examples:" in text and f"iomface {name}" in text.split("examples:")[1], name
        assert "--json" in text and "--far" in text and "--aligned" in text, name   # common options
    assert "--token_file" in sub.choices["verify"].format_help()
    assert "SUBJECT" in sub.choices["verify"].format_help() and "PHOTO" in sub.choices["verify"].format_help()
    assert "--top_k" in sub.choices["identify"].format_help()
    top = parser.format_help()
    assert "Exit codes: 0" in top and all(name in top for name in COMMANDS)


def _subprocess_iomface(*args, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOMFACE_")}
    env.update(XDG_STATE_HOME=str(cwd / "state"))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)                 # quiet without the caller's help
    return subprocess.run([sys.executable, "-m", "iom.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=env)


def test_quiet_by_default_verbose_on_request(tmp_path):
    """Into a pipe (not a terminal): one result line on stdout, nothing on stderr (no
    TensorFlow/absl lines, no progress bar, no ANSI codes), with MTCNN alignment; --verbose
    says what was loaded."""
    raw = sorted(shared_data("raw", "lfw").rglob("*.jpg"))[:2]
    done = _subprocess_iomface("compare", *raw, cwd=tmp_path)
    assert done.returncode in (0, 1), done.stderr
    assert done.stderr == ""
    assert len(done.stdout.splitlines()) == 1 and "\x1b" not in done.stdout
    crops = sorted(shared_data("lfw_112").rglob("*.jpg"))[:2]                # no MTCNN: a faster second run
    done = _subprocess_iomface("compare", *crops, "--aligned", "--verbose", cwd=tmp_path)
    assert "[iomface] model iom_" in done.stderr and "loaded in" in done.stderr


#: the documents whose bash blocks hold ``iomface`` and ``python scripts/X.py`` commands: the README
#: (its blocks also run, in order, in tests/test_readme_commands.py) and the documents it links to,
#: which received its training, evaluation and reference commands
COMMAND_DOCS = ("README.md", "docs/DESIGN.md", "docs/RESULTS.md", "docs/BENCHMARKS.md")


def _doc_command_lines(docs=COMMAND_DOCS) -> list[str]:
    """Every line of the documents' ```bash blocks, continuation lines joined, comments kept."""
    return [line for doc in docs
            for block in re.findall(r"```bash\n(.*?)```", (REPO / doc).read_text(), re.S)
            for line in block.replace("\\\n", " ").splitlines()]


def test_readme_cli_examples_name_real_commands_and_options():
    """Every ``iomface`` line of the README and the documents it links to parses with the real
    parser (the README's are also run end to end by tests/test_readme_commands.py)."""
    import shlex

    from iom.cli.parser import build_parser

    lines = [line.split("#")[0].strip() for line in _doc_command_lines() if line.strip().startswith("iomface ")]
    assert len(lines) >= 8
    readme = {part.split()[1] for line in _doc_command_lines(["README.md"]) for part in line.split(";")
              if part.strip().startswith("iomface ")}
    assert readme >= {"compare", "verify-pairs", "enroll", "verify", "identify", "reissue", "revoke", "list",
                      "show", "serve", "add-key"}
    parser = build_parser()
    for line in lines:
        for part in line.split(";"):
            argv = shlex.split(re.split(r"<<<|\s\d?[>|&]", part)[0])[1:]    # the command, not the shell's part
            parser.parse_args(argv)


def test_readme_script_examples_name_real_scripts_and_options():
    """Every ``python scripts/X.py`` line of the README and the documents it links to names a script
    that exists and options its --help lists (training and full evaluations take hours on CPU: checked,
    not run)."""
    import shlex

    commands = [line.split(" #")[0].strip() for line in _doc_command_lines() if "python scripts/" in line]
    helps: dict = {}
    for line in commands:
        for part in re.split(r"&&|;", line):
            words = shlex.split(part.strip())
            if len(words) < 2 or words[0] != "python" or not words[1].startswith("scripts/"):
                continue
            script = REPO / words[1]
            assert script.is_file(), line
            if script not in helps:
                done = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, capture_output=True,
                                      text=True, timeout=300)
                assert done.returncode == 0, (line, done.stderr[-500:])
                helps[script] = done.stdout
            for word in words[2:]:
                if word.startswith("--"):
                    assert re.search(rf"{re.escape(word.split('=')[0])}\b", helps[script]), (line, word)
    assert len(helps) >= 5
