"""What the benchmarks of ``bench/`` share: the machine, the clock, statistics, results, data.

Every bench starts with the same two lines (``python bench/NAME.py`` puts ``bench/`` first on
``sys.path``, not the repository)::

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.common import ...  # noqa: E402

* **machine**: :func:`cpu_model`, :func:`loadavg`, :func:`process_cpu_s`, :func:`machine_line`
  (the "N cpus (model)" of every bench's first line), :func:`machine_record` (the JSON ``machine``
  object), :func:`describe_device` (the accelerator a Keras backend runs on);
* **clock and statistics**: :func:`utc_now`, :func:`today`, :func:`call_ms`, :func:`percentile`,
  :func:`distribution` (n / mean / min / max / percentiles of a list of timings),
  :func:`wilson` (the confidence interval of a rate);
* **results**: :func:`say` (a progress line), :func:`write_json`, :func:`emit` (the JSON record
  as the last stdout line, and to ``--json``), :func:`markdown_table`, :func:`command_line`;
* **command line**: :func:`arg_parser`, :func:`add_json_option`;
* **environment and stores**: :func:`quiet_tensorflow`, :func:`set_thread_env`, :func:`set_threads`,
  :func:`strong_token`, :func:`postgres_url` (a throw-away PostgreSQL database),
  :func:`store_location`, :func:`cli_env` and :func:`run_timed` (``iomface`` processes);
* **data** (``../shared/data`` beside the repository): :data:`LFW_112`, :data:`RAW_LFW`,
  :data:`CELEBA_112`, :func:`people`, :func:`photo_files`, :func:`read_faces`, :func:`lfw_pairs`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import secrets
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))
LFW_112 = os.path.join(SHARED_DATA, "lfw_112")              # aligned 112x112 LFW crops, pairs.txt
RAW_LFW = os.path.join(SHARED_DATA, "raw", "lfw")            # 20 people x 2 raw 250x250 photos
CELEBA_112 = os.path.join(SHARED_DATA, "celeba299_112")      # 6,258 crops of 299 identities
PHOTO_EXTS = (".jpg", ".jpeg", ".png")


# ---------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """The cores this process may run on (its affinity), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def memory_gib() -> float | None:
    """The machine's memory (GiB), or None."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def loadavg() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (how busy the machine was around a run), or None."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def process_rss_mb() -> float | None:
    """Resident memory of this process now, MB (Linux), else None."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")) / 1e6
    except (OSError, StopIteration, ValueError):
        return None


def peak_rss_mib() -> float | None:
    """The most resident memory this process has had, MiB (Linux), else None."""
    try:
        import resource
    except ImportError:
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def machine_line() -> str:
    """``N cpus (CPU model)``: how every bench names the machine in its first line."""
    return f"{os.cpu_count()} cpus ({cpu_model()})"


def machine_record(**extra) -> dict:
    """The ``machine`` object of a JSON record: CPU, cores, platform, Python, and ``extra``
    (load averages, notes)."""
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), **extra}


def describe_device(backend: str) -> dict:
    """What a Keras backend computes on: JAX's devices, TensorFlow's GPUs, or 'cpu'."""
    if backend == "jax":
        import jax

        devices = jax.devices()
        return {"device": str(devices), "device_kind": sorted({d.device_kind for d in devices}),
                "platform": devices[0].platform, "framework_version": f"jax {jax.__version__}"}
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        kinds = []
        for gpu in gpus:
            try:
                kinds.append(tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name))
            except Exception:  # noqa: BLE001 - details are optional
                kinds.append(gpu.name)
        return {"device": str([g.name for g in gpus]) if gpus else "cpu",
                "device_kind": sorted(set(kinds)) if gpus else ["cpu"],
                "platform": "gpu" if gpus else "cpu", "framework_version": f"tensorflow {tf.__version__}"}
    return {"device": "cpu", "device_kind": ["cpu"], "platform": "cpu", "framework_version": backend}


# ---------------------------------------------------------------------------- clock, statistics
def utc_now() -> str:
    """Now, UTC, to the second (ISO 8601): the ``date`` of most records."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def today() -> str:
    """Today's date (local), ``YYYY-MM-DD``."""
    return time.strftime("%Y-%m-%d")


def call_ms(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), milliseconds it took)``."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, 1e3 * (time.perf_counter() - start)


def percentile(values, q: float) -> float | None:
    """The ``q``-th percentile of ``values`` (NumPy's linear interpolation), None if empty."""
    import numpy as np

    return float(np.percentile(values, q)) if len(values) else None


#: the usual fields of :func:`distribution`
LATENCY_FIELDS = ("n", "mean", "p50", "p90", "p99", "max")


def distribution(values, fields=LATENCY_FIELDS, *, scale: float = 1.0, digits: int = 2,
                 suffix: str = "") -> dict:
    """Figures of ``values`` x ``scale`` (e.g. 1000: seconds to ms), in the order of ``fields``:
    ``n``, ``mean``, ``min``, ``max`` or ``pNN`` (a percentile), each rounded to ``digits`` and
    named with ``suffix`` (``n`` excepted). Empty ``values``: ``{"n": 0}``."""
    import numpy as np

    if not len(values):
        return {"n": 0}
    x = np.asarray(values, np.float64) * scale
    out = {}
    for field in fields:
        if field == "n":
            out["n"] = int(len(x))
            continue
        value = {"mean": x.mean, "min": x.min, "max": x.max}[field]() if field in ("mean", "min", "max") \
            else np.percentile(x, float(field[1:]))
        out[field + suffix] = round(float(value), digits)
    return out


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """The 95% Wilson score interval of a proportion k/n (None when n is 0)."""
    import math

    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


# ---------------------------------------------------------------------------- results
def say(message: str) -> None:
    """A progress line on stdout, flushed (a bench's output is often piped to a log)."""
    print(message, flush=True)


def write_json(path: str, record, indent: int | None = 2, atomic: bool = False) -> None:
    """``record`` as JSON in ``path`` (its folder made; ``atomic``: written aside, then renamed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    target = path + ".tmp" if atomic else path
    with open(target, "w", encoding="utf-8") as f:
        f.write(json.dumps(record, indent=indent) + "\n")
    if atomic:
        os.replace(target, path)


def emit(record: dict, path: str | None = None, indent: int | None = 2) -> None:
    """The end of every bench: ``record`` written to ``path`` (``--json``/``--out``) when given,
    and printed as one JSON object, the LAST stdout line."""
    if path:
        write_json(path, record, indent)
    print(json.dumps(record), flush=True)


def markdown_table(head: list[str], rows: list[list], align: str | None = None) -> list[str]:
    """The lines of a markdown table; ``align``: one ``l`` or ``r`` a column (default: the first
    left, the others right)."""
    align = align or "l" + "r" * (len(head) - 1)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def command_line(script: str, argv: list[str] | None) -> str:
    """The command that ran: ``python`` + ``sys.argv``, or ``script`` + ``argv`` when called."""
    return "python " + " ".join(sys.argv if argv is None else [script, *argv])


# ---------------------------------------------------------------------------- command line
def arg_parser(doc: str, full: bool = False) -> argparse.ArgumentParser:
    """A bench's parser: ``--help`` shows the first line of ``doc`` (``full``: all of it)."""
    if full:
        return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    return argparse.ArgumentParser(description=doc.split("\n")[0])


def add_json_option(parser: argparse.ArgumentParser, help: str = "also write the JSON record here") -> None:
    parser.add_argument("--json", default=None, metavar="PATH", help=help)


# ---------------------------------------------------------------------------- environment, stores
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def quiet_tensorflow(level: str = "2") -> None:
    """TensorFlow's C++ log level, unless the caller's environment sets one."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", level)


def set_thread_env(n: int, variables=THREAD_VARS, override: bool = True) -> None:
    """Thread-pool sizes in the environment (read when TensorFlow / OpenMP start)."""
    for var in variables:
        if override:
            os.environ[var] = str(n)
        else:
            os.environ.setdefault(var, str(n))


def set_threads(n: int | None) -> None:
    """Size the thread pools before TensorFlow starts (no-op for ``None``)."""
    if not n:
        return
    set_thread_env(n)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.config.threading.set_inter_op_parallelism_threads(n)


def strong_token() -> str:
    """A strong random user token (128 bits: the policy refuses weak ones)."""
    return secrets.token_urlsafe(16)


@contextlib.contextmanager
def postgres_url(prefix: str):
    """A new database on a throw-away PostgreSQL server (``tests/pg_server.py``); yields its
    ``postgresql://`` URL (the store factory takes URLs only, not libpq key=value strings)."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    import psycopg
    from tests.pg_server import fresh_database, postgres_server

    with postgres_server() as server, fresh_database(server.dsn, prefix=prefix) as dsn:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
        yield f"postgresql://{info['user']}@{info['host']}:{info['port']}/{info['dbname']}?connect_timeout=10"


@contextlib.contextmanager
def store_location(db: str | None, folder: str, prefix: str = "iombench"):
    """Where a store goes: ``db`` as given, a SQLite file in ``folder`` when None, or with
    ``postgres`` a new database on a throw-away server (:func:`postgres_url`)."""
    if db is None:
        yield os.path.join(folder, "templates.db")
    elif db != "postgres":
        yield db
    else:
        with postgres_url(prefix) as url:
            yield url


def cli_env(**extra) -> dict:
    """This environment without any ``IOMFACE_*`` variable, plus ``extra``: what an ``iomface``
    process of a bench gets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOMFACE_")}
    env.update(extra)
    return env


def run_timed(cmd: list[str], env: dict, cwd: str) -> tuple[float, subprocess.CompletedProcess]:
    """``(seconds, the finished process)`` of a command run to its end, output captured."""
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    return time.perf_counter() - start, done


# ---------------------------------------------------------------------------- data
def people(root: str, min_photos: int = 1) -> list[tuple[str, list[str]]]:
    """``(person, sorted photo paths)`` of every sub-folder of ``root`` (LFW's layout) holding at
    least ``min_photos`` photos, sorted by name."""
    out = []
    for person in sorted(os.listdir(root)):
        folder = os.path.join(root, person)
        if not os.path.isdir(folder):
            continue
        photos = sorted(f for f in os.listdir(folder) if f.lower().endswith(PHOTO_EXTS))
        if len(photos) >= min_photos:
            out.append((person, [os.path.join(folder, p) for p in photos]))
    return out


def photo_files(root: str) -> list[str]:
    """Every photo under ``root`` (searched recursively), sorted."""
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                  if f.lower().endswith(PHOTO_EXTS))


def read_faces(root: str, n: int):
    """``(n, H, W, 3)`` RGB uint8: every k-th photo under ``root``, so that ``n`` span it all."""
    import cv2
    import numpy as np

    files = photo_files(root)
    if not files:
        sys.exit(f"error: no photos under {root}")
    picked = files[::max(1, len(files) // n)][:n]
    return np.stack([cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB) for f in picked])


def lfw_pairs(root: str, n: int) -> list[tuple[str, str, int]]:
    """The first n/2 genuine and n/2 impostor pairs of ``root/pairs.txt``: (photo, photo, same)."""
    with open(os.path.join(root, "pairs.txt")) as f:
        lines = f.read().splitlines()[1:]
    genuine = [line.split("\t") for line in lines if len(line.split("\t")) == 3]
    impostor = [line.split("\t") for line in lines if len(line.split("\t")) == 4]

    def path(name, k):
        return os.path.join(root, name, f"{name}_{int(k):04d}.jpg")

    out = [(path(f[0], f[1]), path(f[0], f[2]), 1) for f in genuine[: n // 2]]
    out += [(path(f[0], f[1]), path(f[2], f[3]), 0) for f in impostor[: n - n // 2]]
    return out
