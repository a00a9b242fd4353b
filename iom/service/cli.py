"""``iomface``: the template service from the command line.

    iomface enroll   SUBJECT PHOTO [PHOTO ...] --token_file F      enroll (several photos are fused)
    iomface verify   SUBJECT PHOTO --token_file F                  accepted or not
    iomface identify PHOTO [--top_k 5]                             matching subjects, ranked
    iomface revoke   SUBJECT PROOF [--expected_version N]          revoke every active template
    iomface reissue  SUBJECT PHOTO [PHOTO ...] --new_token_file F PROOF [--expected_version N]
                                                                   revoke and enroll under a new token
    iomface list     [--all]                                       enrolled subjects
    iomface show     SUBJECT                                       template metadata, version (no codes)
    iomface set-admin --new_admin_secret_file F                    set (or, with the current one, replace)
                                                                   the administrator credential

PROOF (revoke, reissue) is the subject's current token with a fresh photo of the face,
``--token_file F --proof PHOTO``, or the administrator secret (``--admin_secret_file`` or
``IOMFACE_ADMIN_SECRET``; used when no ``--token_file`` is given), checked against the verifier
that ``set-admin`` keeps in the store (an HMAC under the application secret, never the secret). ``--expected_version N``
refuses the change if the subject's templates changed since version N (``show`` prints it).

Secrets never go on the command line, where every user of the machine can read them
(``ps``, ``/proc/PID/cmdline``) and the shell keeps them in its history:

* tokens: ``--token_file FILE`` holds the token on one line (its newline is stripped); ``-``
  reads one line from standard input (reissue with ``--token_file - --new_token_file -`` reads
  the current token, then the new one). ``--token VALUE`` (and ``--new_token``, ``--secret``,
  ``--admin_secret``) is refused.
* the application secret: the environment variable ``IOMFACE_APP_SECRET`` or ``--secret_file``;
  the administrator secret: ``IOMFACE_ADMIN_SECRET`` or ``--admin_secret_file``. Neither is ever
  stored. Like ssh with keys, a secret file that group or others may read or write is refused
  (``chmod 600 FILE``).
* the store: ``--db`` (default: the environment variable ``IOMFACE_DB``, else ``iomface.db``),
  a SQLite file (a path or ``sqlite:///PATH``) or a ``postgresql://`` URL. A ``--db`` URL with a
  password is refused: put the URL in ``IOMFACE_DB``, or the password in a libpq password file
  (``~/.pgpass``). A libpq ``key=value`` string is refused too (it is not a file name). No message
  shows a URL's ``user:password``. A new SQLite database is created 0600 (its folder 0700).

Rollback: the head of the store's HMAC-chained event log is recorded in a witness file,
``--witness FILE`` (or ``IOMFACE_WITNESS``), by default one per store under
``~/.local/state/iomface/``; keep it on storage a database attacker cannot write. A database
later rolled back to an earlier state is then refused (after replacing a database on purpose,
delete its witness file).

Other options: ``--model`` (the name of a shipped hasher under models/, default
``iom_mobilefacenet_ms1m_512x8``), ``--aligned`` (photos are already aligned 112x112 crops: skip
MTCNN), ``--json``, and ``--allow_embeddings`` (research and testing: accept raw embeddings,
``--embeddings FILE.npz`` instead of photos and ``--proof_embeddings FILE.npz`` instead of
``--proof``; their first row is the probe). Decisions and ranks only, never similarities.
Errors print one ``error:`` line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from iom.defaults import DEFAULT_HASHER  # noqa: E402

COMMANDS = ("enroll", "verify", "identify", "revoke", "reissue", "list", "show", "set-admin")
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
DEFAULT_DB = "iomface.db"


class _Parser(argparse.ArgumentParser):
    """argparse with errors on one ``error:`` line (exit 2) that never echo argument values."""

    def error(self, message: str):
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            options = [w.split("=", 1)[0] for w in message[len(prefix):].split() if w.startswith("-")]
            message = prefix + (" ".join(options) + " " if options else "") + "(values not shown)"
        self.exit(2, f"error: {self.prog}: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="iomface", description=__doc__, allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=None,
                        help="SQLite file or postgresql:// URL without password (default: $IOMFACE_DB, "
                             f"else {DEFAULT_DB})")
    parser.add_argument("--model", default=DEFAULT_HASHER, help="shipped hasher name (models/)")
    parser.add_argument("--secret_file", default=None, help="file holding the application secret (chmod 600)")
    parser.add_argument("--admin_secret_file", default=None,
                        help="file holding the administrator secret (chmod 600; default $IOMFACE_ADMIN_SECRET)")
    parser.add_argument("--witness", default=None,
                        help="file (off the database's storage) recording the head of the store's event log, "
                             "so a rolled-back database is detected (default: $IOMFACE_WITNESS)")
    parser.add_argument("--aligned", action="store_true", help="photos are aligned crops (no MTCNN)")
    parser.add_argument("--allow_embeddings", action="store_true",
                        help="accept raw embeddings (--embeddings, --proof_embeddings): research/testing only")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, allow_abbrev=False)

    def token_file(p, required: bool, help: str = "file holding the token on one line ('-': stdin)"):
        p.add_argument("--token_file", required=required, default=None, help=help)

    def proof(p):
        token_file(p, False, help="file holding the current token ('-': stdin); with --proof")
        p.add_argument("--proof", default=None, help="a fresh photo of the subject (with --token_file)")
        p.add_argument("--proof_embeddings", default=None,
                       help=".npz whose first row is the proof (with --allow_embeddings)")
        p.add_argument("--expected_version", type=int, default=None,
                       help="refuse if the subject's version (see show) is no longer N")

    p = command("enroll")
    p.add_argument("subject")
    p.add_argument("photos", nargs="*")
    token_file(p, True)
    p.add_argument("--embeddings", default=None, help=".npz whose 'embeddings' rows are the samples")
    p = command("reissue")
    p.add_argument("subject")
    p.add_argument("photos", nargs="*")
    p.add_argument("--new_token_file", required=True, help="file holding the new token ('-': stdin)")
    p.add_argument("--embeddings", default=None, help=".npz whose 'embeddings' rows are the new samples")
    proof(p)
    p = command("verify")
    p.add_argument("subject")
    p.add_argument("photo", nargs="?")
    token_file(p, True)
    p.add_argument("--embeddings", default=None, help=".npz whose first row is the probe")
    p = command("identify")
    p.add_argument("photo", nargs="?")
    p.add_argument("--top_k", type=int, default=5)
    p.add_argument("--embeddings", default=None, help=".npz whose first row is the probe")
    p = command("revoke")
    p.add_argument("subject")
    proof(p)
    p = command("list")
    p.add_argument("--all", action="store_true", help="include revoked subjects")
    p = command("show")
    p.add_argument("subject")
    p = command("set-admin")
    p.add_argument("--new_admin_secret_file", required=True,
                   help="file holding the new administrator secret (chmod 600); replacing one needs the "
                        "current one (--admin_secret_file or $IOMFACE_ADMIN_SECRET)")
    return parser


# ---------------------------------------------------------------------------- secrets
def _literal_secret_option(argv) -> str | None:
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
    :class:`~iom.service.errors.InvalidInputError` (the message never shows the token)."""
    from iom.service.errors import InvalidInputError

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
        try:
            with open(source, "rb") as f:
                data = f.read(MAX_TOKEN_FILE_BYTES + 1)
        except OSError as e:
            raise InvalidInputError(f"{where}: {e.strerror or e}") from None
        if len(data) > MAX_TOKEN_FILE_BYTES:
            raise InvalidInputError(f"{where}: larger than {MAX_TOKEN_FILE_BYTES} bytes, not a token file")
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
    from iom.service.errors import InvalidInputError

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


def _secret(args) -> bytes:
    from iom.service.errors import InvalidInputError

    if args.secret_file:
        return read_secret_file(args.secret_file, "--secret_file")
    secret = os.environ.get("IOMFACE_APP_SECRET", "").encode()
    if not secret:
        raise InvalidInputError("no application secret: set IOMFACE_APP_SECRET or pass --secret_file")
    return secret


def _admin_secret(args) -> bytes | None:
    if args.admin_secret_file:
        return read_secret_file(args.admin_secret_file, "--admin_secret_file")
    return os.environ.get("IOMFACE_ADMIN_SECRET", "").encode() or None


def store_location(db: str | None, environ=None) -> str:
    """The store to open: ``--db`` (checked: no libpq ``key=value`` string, no password), else
    ``$IOMFACE_DB`` (which may hold a password: the environment is private to the process),
    else ``iomface.db``."""
    from iom.service.errors import InvalidInputError
    from iom.service.stores import check_location, dsn_has_password

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


def _embeddings(path):
    if path is None:
        return None
    from arcface.embeddings_io import load_embeddings

    return load_embeddings(path).embeddings


def _check_options(args) -> None:
    """Option combinations, checked before anything is read or loaded."""
    from iom.service.errors import InvalidInputError

    for option in ("embeddings", "proof_embeddings"):
        if getattr(args, option, None) is not None and not args.allow_embeddings:
            raise InvalidInputError(f"--{option} needs --allow_embeddings (before the command): raw "
                                    "embeddings bypass the face pipeline, for research and testing only")
    if args.command in ("revoke", "reissue"):
        if args.proof is not None and args.proof_embeddings is not None:
            raise InvalidInputError(f"{args.command}: give --proof or --proof_embeddings, not both")
        has_face = args.proof is not None or args.proof_embeddings is not None
        if args.token_file is not None and not has_face:
            raise InvalidInputError(f"{args.command}: --token_file is a proof together with a fresh photo "
                                    "of the face: add --proof PHOTO")
        if has_face and args.token_file is None:
            raise InvalidInputError(f"{args.command}: --proof needs the current token: add --token_file")


# ---------------------------------------------------------------------------- commands
def run(args, stdin=None) -> object:
    from iom.service.errors import InvalidInputError
    from iom.service.stores import open_store

    # everything that needs no model and no database first
    location = store_location(args.db)
    _check_options(args)
    secret = _secret(args)
    admin = _admin_secret(args)
    token = new_token = None
    if args.command == "reissue":        # stdin order: the current token, then the new one
        token = read_token(args.token_file, "--token_file", stdin) if args.token_file else None
        new_token = read_token(args.new_token_file, "--new_token_file", stdin)
    elif getattr(args, "token_file", None) is not None:
        token = read_token(args.token_file, "--token_file", stdin)
    proof: dict = {}
    if args.command in ("revoke", "reissue"):
        if token is not None:
            proof = dict(user_token=token)
        elif admin is not None:
            proof = dict(admin_secret=admin)
        else:
            raise InvalidInputError(f"{args.command} needs a proof: the current token and a fresh photo "
                                    "(--token_file FILE --proof PHOTO), or the administrator secret "
                                    "(--admin_secret_file FILE or IOMFACE_ADMIN_SECRET)")
    emb = _embeddings(getattr(args, "embeddings", None))
    if args.command in ("enroll", "reissue") and emb is None and not args.photos:
        raise InvalidInputError(f"{args.command}: give photos or --embeddings")
    if args.command in ("verify", "identify") and emb is None and args.photo is None:
        raise InvalidInputError(f"{args.command}: give a photo or --embeddings")
    if args.command in ("revoke", "reissue") and "user_token" in proof:
        proof_emb = _embeddings(args.proof_embeddings)
        if proof_emb is not None:
            proof["proof_embedding"] = proof_emb[:1]
        else:
            proof["proof_photo"] = args.proof

    from iom.service.pipeline import Pipeline

    pipeline = Pipeline.from_pretrained(args.model, align=not args.aligned)   # checks the name first
    store = open_store(location)
    try:
        from iom.service.policy import ServicePolicy
        from iom.service.service import TemplateService

        # the administrator credential is checked against the verifier kept in the store
        # (set-admin), never against the one the caller presents
        service = TemplateService(pipeline, store, secret,
                                  policy=ServicePolicy(allow_embeddings=args.allow_embeddings),
                                  witness=witness_path(args.witness, location))
        if args.command == "set-admin":
            new = read_secret_file(args.new_admin_secret_file, "--new_admin_secret_file")
            service.set_admin_credential(new, current_secret=admin)
            return {"admin_credential": "set"}
        if args.command == "list":
            return service.list(include_revoked=args.all)
        if args.command == "show":
            return service.get(args.subject)
        if args.command == "enroll":
            ids = service.enroll(args.subject, args.photos or None, emb, user_token=token)
            return {"subject": args.subject, "templates": ids}
        if args.command == "reissue":
            ids = service.reissue(args.subject, args.photos or None, new_token, embeddings=emb,
                                  expected_version=args.expected_version, **proof)
            return {"subject": args.subject, "templates": ids}
        if args.command == "revoke":
            n = service.revoke(args.subject, expected_version=args.expected_version, **proof)
            return {"subject": args.subject, "revoked": n}
        probe = None if emb is None else emb[:1]
        if args.command == "verify":
            d = service.verify(args.subject, args.photo, token, embedding=probe)
            return {"subject": args.subject, "accepted": bool(d.accepted)}
        hits = service.identify(args.photo, args.top_k, embedding=probe)
        return [{"subject": c.subject_id, "rank": c.rank} for c in hits]
    finally:
        store.close()


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def main(argv=None) -> int:
    from arcface.errors import IomfaceError
    from iom.service.stores import scrub_dsn

    argv = sys.argv[1:] if argv is None else list(argv)
    literal = _literal_secret_option(argv)
    if literal is not None:
        print(f"error: {literal} is refused: a secret on the command line can be read by every user of "
              f"this machine (ps, /proc/PID/cmdline) and stays in the shell history; use "
              f"{LITERAL_SECRET_OPTIONS[literal]}", file=sys.stderr)
        return 2
    args = _parser().parse_args(argv)
    from arcface.cli import import_backend_quietly

    import_backend_quietly()
    try:
        result = run(args)
    except (IomfaceError, OSError) as e:
        message = str(e)
        for dsn in (args.db, os.environ.get("IOMFACE_DB")):
            message = scrub_dsn(message, dsn)
        print(f"error: {_one_line(message)}", file=sys.stderr)
        return 2
    if args.json or not isinstance(result, (dict, list)):
        print(json.dumps(result))
    elif isinstance(result, list):
        for item in result:
            print(item if not isinstance(item, dict) else "  ".join(f"{k}={v}" for k, v in item.items()))
    else:
        print("  ".join(f"{k}={v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
