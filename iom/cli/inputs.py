"""What the ``iomface`` command reads before any model loads: secrets, tokens, the store's
location and witness, photo files, pair lists and enrolment folders.

Everything here is checked up front, so a mistyped path or a missing secret is one clear
error (exit 2) within a second, before TensorFlow and the models load (about 10 s), and
before any database is opened or created.
"""

from __future__ import annotations

import os
import stat
import sys

#: options that would put a secret in argv, and what to use instead
LITERAL_SECRET_OPTIONS = {
    "--token": "--token_file FILE (the token on one line; '-' reads it from standard input)",
    "--new_token": "--new_token_file FILE (the token on one line; '-' reads it from standard input)",
    "--secret": "--secret_file FILE (chmod 600) or the IOMFACE_APP_SECRET environment variable",
    "--app_secret": "--secret_file FILE (chmod 600) or the IOMFACE_APP_SECRET environment variable",
    "--admin_secret": "--admin_secret_file FILE (chmod 600) or the IOMFACE_ADMIN_SECRET environment variable",
}
MAX_TOKEN_FILE_BYTES = 4096
MAX_SECRET_FILE_BYTES = 64 * 1024
MAX_LIST_FILE_BYTES = 16 * 1024 * 1024
DEFAULT_DB = "iomface.db"
#: photo file extensions read from an enrolment folder
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


# ---------------------------------------------------------------------------- secrets
def literal_secret_option(argv) -> str | None:
    """The first option of ``argv`` that would carry a secret literally, or None."""
    for arg in argv:
        if arg == "--":
            break
        if isinstance(arg, str) and arg.split("=", 1)[0] in LITERAL_SECRET_OPTIONS:
            return arg.split("=", 1)[0]
    return None


def read_token(source: str, option: str = "--token_file", stdin=None) -> bytes:
    """The token in file ``source`` (``-``: one line of ``stdin``, default standard input).

    The file holds the token on one line; its trailing newline (``\\n`` or ``\\r\\n``) is
    stripped and nothing else is. An empty token, or a file of more than one line, is an
    :class:`~iom.errors.InvalidInputError` (the message never shows the token)."""
    from iom.errors import InvalidInputError

    if source == "-":
        stream = stdin if stdin is not None else sys.stdin
        if stream is None:
            raise InvalidInputError(f"{option} -: there is no standard input to read the token from")
        stream = getattr(stream, "buffer", stream)
        data = stream.readline(MAX_TOKEN_FILE_BYTES + 1)
        if isinstance(data, str):
            data = data.encode("utf-8")
        where = f"{option} - (standard input)"
        if len(data) > MAX_TOKEN_FILE_BYTES:
            raise InvalidInputError(f"{where}: the line is longer than {MAX_TOKEN_FILE_BYTES} bytes")
    else:
        where = f"{option} {source}"
        data = _read_at_most(source, MAX_TOKEN_FILE_BYTES, where,
                             f"larger than {MAX_TOKEN_FILE_BYTES} bytes, not a token file")
    if data.endswith(b"\n"):
        data = data[:-1]
        if data.endswith(b"\r"):
            data = data[:-1]
    if b"\n" in data:
        raise InvalidInputError(f"{where}: holds more than one line; a token file holds the token on one line")
    if not data:
        raise InvalidInputError(f"{where}: the token is empty")
    return data


def read_secret_file(path: str, option: str = "--secret_file") -> bytes:
    """The secret in file ``path`` (surrounding whitespace stripped). Like ssh with private
    keys, a regular file that group or others may read or write (``mode & 0o077``) is refused,
    with the ``chmod 600`` that fixes it; so are a missing or empty file."""
    from iom.errors import InvalidInputError

    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
                raise InvalidInputError(
                    f"{option} {path}: permissions {stat.S_IMODE(st.st_mode):04o} are too open: group or "
                    f"others can read or write the secret; it is not used. Run: chmod 600 {path}")
            secret = f.read(MAX_SECRET_FILE_BYTES + 1).strip()
    except OSError as e:
        raise InvalidInputError(f"{option} {path}: {e.strerror or e}") from None
    if len(secret) > MAX_SECRET_FILE_BYTES:
        raise InvalidInputError(f"{option} {path}: larger than {MAX_SECRET_FILE_BYTES} bytes, not a secret file")
    if not secret:
        raise InvalidInputError(f"{option} {path} is empty")
    return secret


def app_secret(args) -> bytes:
    from iom.errors import InvalidInputError

    if args.secret_file:
        return read_secret_file(args.secret_file, "--secret_file")
    secret = os.environ.get("IOMFACE_APP_SECRET", "").encode()
    if not secret:
        raise InvalidInputError("no application secret: set IOMFACE_APP_SECRET or pass --secret_file")
    return secret


def admin_secret(args) -> bytes | None:
    if args.admin_secret_file:
        return read_secret_file(args.admin_secret_file, "--admin_secret_file")
    return os.environ.get("IOMFACE_ADMIN_SECRET", "").encode() or None


def store_location(db: str | None, environ=None) -> str:
    """The store to open: ``--db`` (checked: no libpq ``key=value`` string, no password), else
    ``$IOMFACE_DB`` (which may hold a password: the environment is private to the process),
    else ``iomface.db``."""
    from iom.errors import InvalidInputError
    from iom.store.dsn import dsn_has_password
    from iom.store.factory import check_location

    environ = os.environ if environ is None else environ
    if db is None:
        return check_location(environ.get("IOMFACE_DB") or DEFAULT_DB)
    db = check_location(db)
    if dsn_has_password(db):
        raise InvalidInputError(
            "--db: the store URL contains a password, which every user of this machine can read in "
            "the process list (ps); leave it out of the command line: put the whole URL in the "
            "IOMFACE_DB environment variable instead of --db, or keep the password in a libpq password "
            "file (~/.pgpass, or the file PGPASSFILE names) and give --db without it")
    return db


def witness_path(option: str | None, location: str, environ=None) -> str:
    """The witness file of a store: ``--witness``, else ``$IOMFACE_WITNESS``, else one per
    store location under ``$XDG_STATE_HOME/iomface`` (``~/.local/state/iomface``), folder 0700.
    Every CLI command is a new process, so without a witness a rolled-back database would go
    unnoticed."""
    import hashlib

    environ = os.environ if environ is None else environ
    if option or environ.get("IOMFACE_WITNESS"):
        return option or environ["IOMFACE_WITNESS"]
    state = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    folder = os.path.join(state, "iomface")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    where = location if "://" in location else os.path.abspath(location)
    return os.path.join(folder, "witness-" + hashlib.sha256(where.encode("utf-8")).hexdigest()[:24])


def sqlite_file(location: str) -> str | None:
    """The file of a SQLite store location (a path or ``sqlite:///PATH``); None for PostgreSQL."""
    if location.startswith(("postgresql://", "postgres://")):
        return None
    if location.startswith("sqlite:///"):
        return location[len("sqlite:///"):]
    return location


def require_store_folder(location: str) -> None:
    """A new SQLite store goes into a folder that exists: a mistyped ``--db`` folder is an
    :class:`InvalidInputError`, not a tree of new folders holding an empty database."""
    from iom.errors import InvalidInputError

    path = sqlite_file(location)
    if path is None or os.path.isfile(path):
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InvalidInputError(f"--db {path}: the folder {folder} does not exist (a typo?); create it first "
                                "if the database is to live there")


def require_existing_store(location: str, command: str) -> None:
    """A read or change of enrolled templates needs a store that exists: a missing SQLite file
    is an :class:`InvalidInputError` (the command must not create an empty database)."""
    from iom.errors import InvalidInputError

    path = sqlite_file(location)
    if path is not None and not os.path.isfile(path):
        raise InvalidInputError(f"no template database at {path}: {command} reads enrolled templates; "
                                "check --db (or IOMFACE_DB), or enroll someone first (iomface enroll)")


def check_photo_files(paths, what: str = "photo", aligned_size: int | None = None) -> list[str]:
    """Each path is a readable, non-empty regular file of at most the pipeline's size limit
    whose header is an image in a supported format within the decode limits (read, nothing
    decoded); with ``aligned_size``, of exactly that many pixels a side:
    :class:`InvalidInputError` naming the file otherwise."""
    from arcface.errors import IomfaceError
    from iom.errors import InvalidInputError
    from iom.service.pipeline import MAX_PHOTO_BYTES

    out = []
    for path in paths:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise InvalidInputError(f"{what} {path}: no such file")
        if not os.path.isfile(path):
            raise InvalidInputError(f"{what} {path}: not a regular file")
        size = os.path.getsize(path)
        if size == 0:
            raise InvalidInputError(f"{what} {path}: the file is empty")
        if size > MAX_PHOTO_BYTES:
            raise InvalidInputError(f"{what} {path}: {size:,} bytes exceeds the {MAX_PHOTO_BYTES:,}-byte limit")
        if not os.access(path, os.R_OK):
            raise InvalidInputError(f"{what} {path}: not readable (permission denied)")
        from arcface.data.images import image_size

        try:
            width, height = image_size(path)      # every photo's header, before any model loads
        except IomfaceError as e:
            raise InvalidInputError(f"{what} {path}: {e}") from None
        if aligned_size is not None:
            if (width, height) != (aligned_size, aligned_size):
                raise InvalidInputError(
                    f"{what} {path} is {width}x{height}, not an aligned {aligned_size}x{aligned_size} face "
                    "crop: leave out --aligned to detect and align the face with MTCNN")
        out.append(path)
    return out


def _read_at_most(path: str, limit: int, where: str, too_large: str) -> bytes:
    """The bytes of file ``path``; :class:`InvalidInputError` ``"{where}: ..."`` when it cannot
    be read, or ``"{where}: {too_large}"`` when it holds more than ``limit`` bytes."""
    from iom.errors import InvalidInputError

    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise InvalidInputError(f"{where}: {e.strerror or e}") from None
    if len(data) > limit:
        raise InvalidInputError(f"{where}: {too_large}")
    return data


def _read_small_text(path: str, what: str) -> str:
    from iom.errors import InvalidInputError

    data = _read_at_most(path, MAX_LIST_FILE_BYTES, f"{what} {path}",
                         f"larger than {MAX_LIST_FILE_BYTES:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{what} {path}: not UTF-8 text") from None


#: third-column values of a pairs file
SAME_LABELS = {"1": True, "same": True, "genuine": True, "true": True,
               "0": False, "diff": False, "different": False, "impostor": False, "false": False}


def read_pairs_file(path: str) -> list[tuple[str, str, bool | None]]:
    """``(photo_a, photo_b, same)`` per line of a pairs file: two photo paths separated by a
    tab (or, when neither path contains a space, by spaces), optionally a third column saying
    whether they show the same person (``1``/``same``/``genuine`` or ``0``/``diff``/``impostor``;
    ``None`` when absent). Blank lines and lines starting with ``#`` are skipped. Relative
    paths are relative to the pairs file's folder. A malformed line is an
    :class:`InvalidInputError` naming its number."""
    from iom.errors import InvalidInputError

    text = _read_small_text(path, "pairs file")
    base = os.path.dirname(os.path.abspath(path))
    if _is_lfw_pairs(text):
        return _lfw_pairs(path, base)
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = [f.strip() for f in stripped.split("\t")] if "\t" in stripped else stripped.split()
        if len(fields) not in (2, 3) or not all(fields):
            raise InvalidInputError(f"pairs file {path}, line {number}: expected 'PHOTO_A PHOTO_B [same|diff]' "
                                    f"(tab-separated when a path has spaces), got {len(fields)} fields")
        same = None
        if len(fields) == 3:
            same = SAME_LABELS.get(fields[2].lower())
            if same is None:
                raise InvalidInputError(f"pairs file {path}, line {number}: third column {fields[2]!r:.40} is "
                                        "not a label (1/same/genuine or 0/diff/impostor)")
        a, b = (f if os.path.isabs(f) else os.path.join(base, f) for f in fields[:2])
        pairs.append((a, b, same))
    if not pairs:
        raise InvalidInputError(f"pairs file {path}: no pairs in it")
    return pairs


def _is_lfw_pairs(text: str) -> bool:
    """Whether a pairs file is in LFW's own format: an optional ``FOLDS<TAB>N`` header, then
    ``NAME<TAB>I<TAB>J`` (same person) and ``NAME1<TAB>I<TAB>NAME2<TAB>J`` lines."""
    for line in text.splitlines():
        fields = line.strip().split("\t")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        digits = [f.isascii() and f.isdigit() for f in fields]
        return (len(fields) == 2 and all(digits)) or (len(fields) == 3 and digits[1:] == [True, True]) or \
            (len(fields) == 4 and digits == [False, True, False, True])
    return False


def _lfw_pairs(path: str, base: str) -> list[tuple[str, str, bool | None]]:
    """The pairs of an LFW-format file, photos ``NAME/NAME_XXXX.jpg`` beside it (as LFW lays them out)."""
    from arcface.data.pairs import read_lfw_pairs
    from arcface.errors import DataFormatError
    from iom.errors import InvalidInputError

    try:
        pairs = read_lfw_pairs(path)
    except DataFormatError as e:
        raise InvalidInputError(f"pairs file {path} (LFW format): {e}") from None

    def photo(name: str, index: int) -> str:
        return os.path.join(base, name, f"{name}_{index:04d}.jpg")

    return [(photo(p.name1, p.idx1), photo(p.name2, p.idx2), bool(p.issame)) for p in pairs]


def subject_folders(folder: str) -> list[tuple[str, list[str]]]:
    """``(subject, photos)`` for each sub-folder of an enrolment folder (the sub-folder's name is
    the subject id; its photos, sorted, are fused into one template). Files directly in
    ``folder`` and sub-folders without photos are an :class:`InvalidInputError`."""
    from iom.errors import InvalidInputError
    from iom.store.records import check_subject_id

    if not os.path.isdir(folder):
        raise InvalidInputError(f"--from-folder {folder}: not a folder")
    out, loose = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            photos = sorted(os.path.join(entry.path, f) for f in os.listdir(entry.path)
                            if f.lower().endswith(PHOTO_EXTENSIONS) and not f.startswith("."))
            if not photos:
                raise InvalidInputError(f"--from-folder {folder}: sub-folder {entry.name!r} holds no photo "
                                        f"({', '.join(PHOTO_EXTENSIONS)})")
            out.append((check_subject_id(entry.name), photos))
        elif entry.name.lower().endswith(PHOTO_EXTENSIONS):
            loose.append(entry.name)
    if loose:
        raise InvalidInputError(f"--from-folder {folder}: photos directly in the folder ({loose[0]}, ...): "
                                "put each subject's photos in a sub-folder named after the subject")
    if not out:
        raise InvalidInputError(f"--from-folder {folder}: no sub-folders (one per subject, holding their photos)")
    return out


def read_batch_file(path: str, columns: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The lines of a batch file: tab-separated ``columns`` (the last one a photo, relative to the
    file's folder unless absolute; ``SUBJECT`` checked as a subject id). Blank lines and lines
    starting with ``#`` are skipped; a malformed line is an :class:`InvalidInputError` naming
    its number."""
    from iom.errors import InvalidInputError
    from iom.store.records import check_subject_id

    text = _read_small_text(path, "batch file")
    base = os.path.dirname(os.path.abspath(path))
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")] if len(columns) > 1 else [line.strip()]
        if len(fields) != len(columns) or not all(fields):
            raise InvalidInputError(f"--batch {path}, line {number}: expected {'<TAB>'.join(columns)}, got "
                                    f"{len(fields)} field(s)")
        if columns[0] == "SUBJECT":
            try:
                fields[0] = check_subject_id(fields[0])
            except InvalidInputError as e:
                raise InvalidInputError(f"--batch {path}, line {number}: {e}") from None
        photo = fields[-1]
        fields[-1] = photo if os.path.isabs(photo) else os.path.join(base, photo)
        items.append(tuple(fields))
    if not items:
        raise InvalidInputError(f"--batch {path}: no line to process in it")
    return items


def read_tokens_table(path: str) -> dict[str, bytes]:
    """``{subject: token}`` from a tokens file: one ``SUBJECT<TAB>TOKEN`` line per subject, the
    file private to its owner (``chmod 600``, like a secret file)."""
    from iom.errors import InvalidInputError
    from iom.store.records import check_subject_id

    text = read_secret_file(path, "--tokens_file").decode("utf-8", errors="strict")
    tokens: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        subject, sep, token = line.partition("\t")
        if not sep or not token.strip():
            raise InvalidInputError(f"--tokens_file {path}, line {number}: expected SUBJECT<TAB>TOKEN")
        subject = check_subject_id(subject)
        if subject in tokens:
            raise InvalidInputError(f"--tokens_file {path}, line {number}: subject {subject!r} appears twice")
        tokens[subject] = token.strip().encode("utf-8")
    return tokens


def create_private_file(path: str, option: str):
    """A new file opened for writing text, mode 0600, that must not exist yet (never
    overwrites: it is where new tokens go)."""
    from iom.errors import InvalidInputError

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    except FileExistsError:
        raise InvalidInputError(f"{option} {path}: the file exists; it is not overwritten (tokens in it "
                                "may be the only copy): give a new file name") from None
    except OSError as e:
        raise InvalidInputError(f"{option} {path}: {e.strerror or e}") from None
    return os.fdopen(fd, "w", encoding="utf-8")


def check_port_free(host: str, port: int) -> None:
    """``serve``'s address can be listened on now (checked before the model loads and the
    store opens): :class:`InvalidInputError` naming it when it is taken or not this machine's."""
    import errno
    import socket

    from iom.errors import InvalidInputError

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        raise InvalidInputError(f"--host {host}: cannot be resolved ({e.strerror or e})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn does
        try:
            sock.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise InvalidInputError(f"--port {port}: {host}:{port} is already in use (another server?); "
                                        "stop it or choose another --port") from None
            raise InvalidInputError(f"--host {host} --port {port}: cannot listen there "
                                    f"({e.strerror or e})") from None
