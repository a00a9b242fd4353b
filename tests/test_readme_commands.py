"""The README's commands, run as a user runs them from a bare clone (issue 25).

Every ```bash block of README.md runs, in the README's order (the quick start makes what later
blocks use), as ONE bash script with ``set -euo pipefail``, from the root of a copy of the
repository's files (``git ls-files -co --exclude-standard``: tracked, and untracked but not ignored)
in a fresh temporary folder with nothing beside it (no ``../shared``). Nothing of this machine's
state is used: HOME, XDG_STATE_HOME and TMPDIR point into the temporary folder and no IOMFACE_*
variable is passed. The copy's code is what runs: PYTHONPATH names the copy, and a sitecustomize
removes the import finder of an editable install (which would load the original checkout); the
test checks where ``iom`` and the models come from.

**Skipping a block.** A block runs unless the line right before its opening fence is the marker

    <!-- readme-test: skip -->

(an HTML comment: GitHub does not show it). Mark only what a test cannot run: pip install or conda
environments, ``.ci/run``, training on GPUs, anything that needs ``../shared`` data or the network.
Skipped blocks are still checked by tests/test_cli_usability.py (every ``iomface`` line parses with
the real parser, every ``python scripts/X.py`` line names a script and options that exist).

Commands that are meant to fail (a rejection exits 1) are written in the README so that the
script goes on (``... || echo "rejected (exit $?)"``). The HTTP block's port, 8080, is replaced by
a free one, and the server is stopped however the script ends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SKIP_MARKER = "<!-- readme-test: skip -->"
README = REPO / "README.md"
#: what the README's commands write into the clone: left out of the copy if a local run left them
README_OUTPUTS = ("samples", "people", "templates.db", "app.secret", "admin.secret", "hopper.token",
                  "hopper.new.token", "tokens.tsv", "probes.tsv", "photos.txt", "keys.json", "desk.json",
                  "door.json", "server.log")
TIMEOUT_S = 900                        # about 2-3 minutes on 2 cores; generous for a loaded CI machine

#: removes the editable install's finder (it maps ``iom``/``arcface`` to the original checkout),
#: then runs whichever sitecustomize this one shadows
SITECUSTOMIZE = '''\
import os, sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if "editable" not in (getattr(f, "__module__", "") or "").lower()
                    and "editable" not in getattr(f, "__name__", type(f).__name__).lower()]
_here = os.path.dirname(os.path.abspath(__file__))
for _entry in sys.path:
    _other = os.path.join(_entry or ".", "sitecustomize.py")
    if os.path.abspath(_entry or ".") != _here and os.path.isfile(_other):
        exec(compile(open(_other).read(), _other, "exec"), {"__name__": "sitecustomize", "__file__": _other})
        break
'''


def bash_blocks(text: str) -> list[tuple[str, bool]]:
    """``(code, skipped)`` of every ```bash block of a markdown text, in order."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            skipped = i > 0 and lines[i - 1].strip() == SKIP_MARKER
            blocks.append(("\n".join(lines[i + 1:end]) + "\n", skipped))
            i = end
        i += 1
    return blocks


def readme_script(text: str, port: int) -> str:
    run = [code for code, skipped in bash_blocks(text) if not skipped]
    script = "".join(run)
    assert "8080" in script, "the HTTP block (port 8080) is expected among the blocks that run"
    return ("set -euo pipefail\n"
            "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n"      # the server, if the script stops early
            + script.replace("8080", str(port)))


def copy_checkout(dst: Path) -> None:
    """The working tree's tracked and untracked-but-not-ignored files, as a bare clone has them."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                                capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"the README test copies the checkout's files with git, which failed here: {e}")
    for name in filter(None, listed.decode().split("\0")):
        if name.split("/")[0] in README_OUTPUTS:
            continue
        src = REPO / name
        if src.is_file() and not src.is_symlink():                 # a tracked file deleted meanwhile: absent
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def user_env(root: Path, clone: Path) -> dict:
    """A user's environment: this virtual environment's commands first, the copy's code, and
    HOME, state and temporary files inside ``root``; no IOMFACE_* variable."""
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    home = root / "home"
    for folder in (home, root / "tmp"):
        folder.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("IOMFACE_") and k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
                                                       "TF_CPP_MIN_LOG_LEVEL", "XDG_CONFIG_HOME",
                                                       "XDG_CACHE_HOME", "XDG_DATA_HOME")}
    env.update(HOME=str(home), XDG_STATE_HOME=str(home / ".local" / "state"), TMPDIR=str(root / "tmp"),
               PYTHONPATH=os.pathsep.join([str(site), str(clone)]),
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    # On the JAX backend every command compiles the same programs again (a model load: about 20 s
    # instead of 8 on 2 cores); JAX's persistent compilation cache, in the temporary folder, keeps the
    # second and later loads as fast as TensorFlow's. No effect on the TensorFlow backend.
    env.update(JAX_COMPILATION_CACHE_DIR=str(root / "jax-cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def run_bash(script: str, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """bash -c SCRIPT in its own process group, killed whole on a timeout (a background server
    would otherwise keep the pipes open)."""
    proc = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the README's commands took over {timeout} s\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def json_answers(out: str) -> list[dict]:
    """The JSON documents curl printed (one a line, or run together on one line)."""
    return [json.loads(doc) for doc in re.findall(r"^\{.*\}$", out.replace("}{", "}\n{"), re.M)]


def no_scores(document) -> bool:
    text = json.dumps(document)
    return "similarity" not in text and "score" not in text


def test_readme_is_a_front_door():
    """Short, no history, no ../shared, the install and test commands kept as CI runs them, and
    every link to a file of the repository (and its heading) resolves."""
    text = README.read_text()
    assert len(text.splitlines()) < 300
    assert "../shared" not in text
    assert not re.search(r"issue[- ]\d", text, re.I)
    ci = (REPO / ".ci" / "run").read_text().split("# --- the README's test command, verbatim ---\n")[1].strip()
    blocks = bash_blocks(text)
    assert blocks[0][1] and ci in blocks[0][0] and "pip install -r requirements.txt -e . && python run_me.py" \
        in blocks[0][0]
    assert not [code for code, skipped in blocks if not skipped and ("pip install" in code or "shared/" in code)]
    for target in re.findall(r"\]\(([^)#:]+)(?:#([^)]+))?\)", text):
        path, anchor = REPO / target[0], target[1]
        assert path.exists(), target
        if anchor:
            assert anchor in heading_slugs(path.read_text()), target
    for anchor in re.findall(r"\]\(#([^)]+)\)", text):
        assert anchor in heading_slugs(text), anchor


def heading_slugs(markdown: str) -> set[str]:
    """GitHub's anchors of a markdown file's headings (outside code blocks)."""
    slugs, seen, fenced = set(), {}, False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6} (.*)", line)):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            slugs.add(slug if n == 0 else f"{slug}-{n}")
    return slugs


def test_readme_commands_run_from_a_bare_clone(tmp_path):
    """The README's bash blocks, run in order as one script from a copy of the checkout with no
    ``../shared`` beside it: every command succeeds and says what the README says it does."""
    clone = tmp_path / "iomface"
    copy_checkout(clone)
    assert (clone / "README.md").read_text() == README.read_text()
    assert not (tmp_path / "shared").exists()
    env = user_env(tmp_path, clone)
    where = subprocess.run([sys.executable, "-c", "import iom, arcface.pretrained as p; print(iom.__file__); "
                            "print(p.MODELS_DIR)"], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():
        assert Path(path).resolve().is_relative_to(clone.resolve()), (path, "is not the copy's")

    done = run_bash(readme_script(README.read_text(), free_port()), clone, env, TIMEOUT_S)
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{out[-4000:]}\nstderr:\n{err[-4000:]}"
    assert err == "", err[-3000:]                                           # quiet: nothing on stderr
    server_log = (clone / "server.log").read_text()
    assert "Traceback" not in server_log, server_log[-3000:]

    # quick start: the sample photos, compare, enrol, verify, identify
    assert "samples/hopper.jpg\nsamples/hopper_copy.jpg\nsamples/collins.png\n" in out
    assert re.search(r"^same person at FAR 0\.001: similarity [0-9.]+, [0-9.]+ above the threshold", out, re.M)
    assert re.search(r"^not the same person at FAR 0\.001: similarity [0-9.]+, [0-9.]+ below the threshold", out, re.M)
    assert "exit 1: not the same person\n" in out
    assert re.search(r"^enrolled hopper: verification template #\d+, identification template #\d+$", out, re.M)
    assert re.search(r"^hopper: accepted at FAR 0\.001 \(threshold [0-9.]+\): expected TAR", out, re.M)
    assert re.search(r"^1\. hopper\n\(1:N threshold ", out, re.M)
    # compare photos: a list of pairs
    assert re.search(r"hopper\.jpg\s+\S*hopper_copy\.jpg\s+similarity [0-9.]+\s+accepted\s+\[same\]", out)
    assert re.search(r"hopper\.jpg\s+\S*collins\.png\s+similarity [0-9.]+\s+rejected\s+\[diff\]", out)
    assert "2 pairs: 2 compared, 1 accepted, 0 failed" in out
    assert "measured on this list: TAR 1.000 (1 same-person pairs); FAR 0.000 (1 different-person pairs)" in out
    # many at once
    assert re.search(r"^collins: enrolled from 1 photo\(s\)", out, re.M) and "1 enrolled, 0 failed" in out
    assert re.search(r"^hopper\s+\S*hopper_copy\.jpg\s+accepted$", out, re.M)
    assert re.search(r"^collins\s+\S*hopper_copy\.jpg\s+rejected$", out, re.M)
    assert "2 lines: 1 accepted, 1 rejected, 0 failed" in out
    assert re.search(r"hopper_copy\.jpg\s+1\. hopper$", out, re.M) and re.search(r"collins\.png\s+1\. collins$", out, re.M)
    assert "2 photos: 2 matched, 0 no match, 0 failed" in out
    # reissue, revoke, list, show
    assert re.search(r"^reissued hopper: verification template #\d+, identification template #\d+$", out, re.M)
    assert "admin_credential=set" in out and re.search(r"^revoked collins: 2 template\(s\)", out, re.M)
    assert re.search(r"^collins\s+revoked\s+enrolled \S+\s+revoked \S+$", out, re.M)
    assert re.search(r"^hopper\s+active\s+enrolled \S+$", out, re.M)
    active = re.findall(r"^template_id=\d+\s+purpose=(\w+) .*revoked_at=None\s+version=(\d+)$", out, re.M)
    assert sorted(active) == [("identify", "2"), ("verify", "2")]          # hopper: enrolled (1), reissued (2)

    # the HTTP session, on the same database: hopper and collins were there before grace
    answers = json_answers(out)
    assert not [a for a in answers if "error" in a], answers
    assert answers[0] == {"status": "ok", "model": "iom_mobilefacenet_ms1m_512x8", "store": "ok"}   # /health
    enrolled, reissued, shown = [a for a in answers if "templates" in a]
    assert enrolled["subject"] == "grace" and [t["purpose"] for t in enrolled["templates"]] == ["verify", "identify"]
    verdicts = [a for a in answers if "accepted" in a and "subject" in a]     # the token, then the old one
    assert verdicts == [{"subject": "grace", "accepted": True}, {"subject": "grace", "accepted": False}]
    candidates = next(a for a in answers if "candidates" in a)["candidates"]
    assert {c["subject"] for c in candidates} == {"hopper", "grace"} and no_scores(candidates)
    compared = next(a for a in answers if "similarity" in a)                  # compare holds both photos
    assert compared["accepted"] is False and "subject" not in compared
    assert reissued["subject"] == "grace" and [t["id"] for t in reissued["templates"]] == \
        [t["id"] + 2 for t in enrolled["templates"]]
    assert {"subject": "grace", "revoked": 2} in answers
    assert {t["version"] for t in shown["templates"]} == {3} and all(t["revoked_at"] for t in shown["templates"])
    listed = {r["subject"]: r for r in next(a for a in answers if "subjects" in a)["subjects"]}
    assert set(listed) == {"collins", "grace", "hopper"}
    assert {"status": "revoked", "version": 3}.items() <= listed["grace"].items()
    assert {"status": "active", "version": 2}.items() <= listed["hopper"].items()
    assert re.search(r"^desk\s+admin", out, re.M) and re.search(r"^door\s+client", out, re.M)
