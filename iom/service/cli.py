"""``iomface``: protected face templates from the command line.

Comparing photos (no database, no secret):

    iomface compare A.jpg B.jpg                      same person? similarity and decision
    iomface verify-pairs pairs.txt                   a list of pairs, one model load, a summary

A template database (SQLite file or PostgreSQL; see "store" below):

    iomface enroll SUBJECT PHOTO [PHOTO ...] --token_file F    enroll (several photos are fused)
    iomface enroll --from-folder DIR --new_tokens_file F        one subject per sub-folder
    iomface verify SUBJECT PHOTO --token_file F                 accepted or not
    iomface identify PHOTO                                      matching subjects, ranked
    iomface revoke SUBJECT PROOF                                revoke every active template
    iomface reissue SUBJECT PHOTO ... --new_token_file F PROOF  revoke and enroll under a new token
    iomface list [--all]                                        enrolled subjects (--all: status, dates)
    iomface show SUBJECT                                        template metadata, version (no codes)
    iomface set-admin --new_admin_secret_file F                 set or replace the administrator credential

Run ``iomface COMMAND --help`` for a command's options and examples. Options may come before
or after the command.

Exit codes: 0 accepted / done; 1 rejected, no match, or not found (a verification that fails,
an identification with no candidate, an unknown or revoked subject, a batch with failed items);
2 usage or input error (bad option, missing file, no secret, refused by policy), with one
``error:`` line on standard error and nothing written.

Decisions. A verification or comparison accepts at an operating point calibrated on
identities disjoint from training and from the reported evaluation: ``--far`` picks a
calibrated target FAR (1e-2, 1e-3, 1e-4; default the hasher's, see the README), ``--threshold``
an explicit similarity. Every decision prints the expected TAR and FAR of its operating point.
Identification accepts at the 1:N threshold of the gallery's size (FPIR 1%). The service never
prints the similarity of a stored template (an oracle to fit codes to); ``compare`` and
``verify-pairs``, which hold both photos, do.

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
  (``~/.pgpass``). No message shows a URL's ``user:password``. A new SQLite database is created
  0600 (its folder 0700), only by ``enroll`` and ``set-admin``, and removed again if the
  command fails; every other command refuses a database that does not exist.

PROOF (revoke, reissue) is the subject's current token with a fresh photo of the face,
``--token_file F --proof PHOTO``, or the administrator secret (``--admin_secret_file`` or
``IOMFACE_ADMIN_SECRET``; used when no ``--token_file`` is given). ``--expected_version N``
refuses the change if the subject's templates changed since version N (``show`` prints it).

Rollback: the head of the store's HMAC-chained event log is recorded in a witness file,
``--witness FILE`` (or ``IOMFACE_WITNESS``), by default one per store under
``~/.local/state/iomface/``; a database later rolled back to an earlier state is refused.

Output: human-readable lines by default, ``--json`` for one JSON document; quiet (no
TensorFlow logs, progress bars only on a terminal); ``--verbose`` adds what was loaded and
how long it took, on standard error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from iom.defaults import DEFAULT_HASHER  # noqa: E402
from iom.service.cli_inputs import (DEFAULT_DB, LITERAL_SECRET_OPTIONS, admin_secret,  # noqa: E402,F401
                                    app_secret, check_photo_files, create_private_file,
                                    literal_secret_option, read_pairs_file, read_secret_file,
                                    read_token, read_tokens_table, require_existing_store, sqlite_file,
                                    store_location, subject_folders, witness_path)

EXIT_OK, EXIT_REJECTED, EXIT_ERROR = 0, 1, 2
COMMANDS = ("compare", "verify-pairs", "enroll", "verify", "identify", "revoke", "reissue", "list",
            "show", "set-admin")
#: commands that may create a SQLite database (every other one needs an existing one)
CREATING_COMMANDS = ("enroll", "set-admin")
#: commands that load no model
MODEL_FREE_COMMANDS = ("list", "show")


class _Parser(argparse.ArgumentParser):
    """argparse with errors on one ``error:`` line (exit 2) that never echo argument values."""

    def error(self, message: str):
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            options = [w.split("=", 1)[0] for w in message[len(prefix):].split() if w.startswith("-")]
            message = prefix + (" ".join(options) + " " if options else "") + "(values not shown)"
        self.exit(EXIT_ERROR, f"error: {self.prog}: {message}\n")


# ---------------------------------------------------------------------------- the parser
def _add_common(p: argparse.ArgumentParser, top: bool) -> None:
    """Options every command takes, before or after the command's name (on a subcommand their
    default is 'not given', so a value given before the command is kept)."""
    d = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    g = p.add_argument_group("common options (before or after the command)")
    g.add_argument("--db", default=d(None),
                   help=f"SQLite file or postgresql:// URL without password (default: $IOMFACE_DB, else {DEFAULT_DB})")
    g.add_argument("--model", default=d(DEFAULT_HASHER),
                   help=f"shipped hasher name under models/ (default: {DEFAULT_HASHER})")
    g.add_argument("--aligned", action="store_true", default=d(False),
                   help="photos are aligned 112x112 face crops: skip MTCNN detection (refused otherwise)")
    g.add_argument("--far", type=float, default=d(None),
                   help="operating point: a calibrated target FAR (1e-2, 1e-3, 1e-4; default: the hasher's)")
    g.add_argument("--threshold", type=float, default=d(None),
                   help="operating point: an explicit similarity threshold in [0, 1] instead of --far")
    g.add_argument("--json", action="store_true", default=d(False), help="print one JSON document")
    g.add_argument("--verbose", "-v", action="store_true", default=d(False),
                   help="details on standard error: what was loaded, the operating point, timings; "
                        "TensorFlow's own logs are not silenced")
    g.add_argument("--secret_file", default=d(None), help="file holding the application secret (chmod 600; "
                   "default $IOMFACE_APP_SECRET)")
    g.add_argument("--admin_secret_file", default=d(None),
                   help="file holding the administrator secret (chmod 600; default $IOMFACE_ADMIN_SECRET)")
    g.add_argument("--witness", default=d(None),
                   help="file off the database's storage recording the head of its event log, so a rolled-back "
                        "database is detected (default: $IOMFACE_WITNESS, else one per store under "
                        "~/.local/state/iomface)")
    g.add_argument("--allow_embeddings", action="store_true", default=d(False),
                   help="accept raw embeddings (--embeddings, --proof_embeddings): research/testing only")


COMMAND_HELP = {
    "compare": ("Compare two photos: same person or not (no database, no secret).",
                "Prints the similarity (fraction of the m code groups that agree) and the decision at the\n"
                "operating point, with its expected TAR and FAR. Exit 0 if accepted, 1 if rejected.",
                ["iomface compare a.jpg b.jpg",
                 "iomface compare a.jpg b.jpg --far 1e-2 --json",
                 "iomface compare crop_a.png crop_b.png --aligned"]),
    "verify-pairs": ("Compare every pair of a list, with one model load.",
                     "FILE has one pair per line: two photo paths separated by a tab (or spaces when no path\n"
                     "has one), optionally a third column 1/same or 0/diff saying whether they are the same\n"
                     "person; '#' starts a comment. Relative paths are relative to FILE's folder. Prints a line\n"
                     "per pair and a summary (with labels: the TAR and FAR measured on the list). Every photo is\n"
                     "checked before the model loads. Exit 0 if every pair was compared, 1 if some photo failed\n"
                     "(no face, unreadable: reported on its line).",
                     ["iomface verify-pairs pairs.txt",
                      "printf 'a.jpg\\tb.jpg\\t1\\n' > pairs.txt && iomface verify-pairs pairs.txt --json"]),
    "enroll": ("Enroll a subject (or a folder of subjects) as protected templates.",
               "With SUBJECT PHOTO...: one subject; several photos are fused into one template; the\n"
               "token (--token_file) keys the verification template. With --from-folder DIR: one subject\n"
               "per sub-folder of DIR (its name is the subject id), one model load, a line per subject and a\n"
               "summary; tokens from --tokens_file (SUBJECT<TAB>TOKEN lines, chmod 600) or new random ones\n"
               "written to --new_tokens_file (created 0600, never overwritten). Exit 0 if all enrolled,\n"
               "1 if some failed (reported on their line).",
               ["iomface enroll alice a1.jpg a2.jpg --token_file alice.token",
                "iomface enroll alice a1.jpg --token_file - <<< \"$ALICE_TOKEN\"",
                "iomface enroll --from-folder people/ --new_tokens_file tokens.tsv"]),
    "verify": ("Verify a photo against a subject's template (1:1).",
               "Prints accepted or rejected with the operating point's expected TAR and FAR. An unknown or\n"
               "revoked subject is rejected like a different face (no enumeration). Exit 0 if accepted,\n"
               "1 if rejected.",
               ["iomface verify alice probe.jpg --token_file alice.token",
                "iomface verify alice probe.jpg --token_file - --far 1e-4 <<< \"$ALICE_TOKEN\""]),
    "identify": ("Find the enrolled subjects matching a photo (1:N).",
                 "Candidates accepted at the 1:N threshold of the gallery's size (FPIR 1%), best first, at\n"
                 "most --top_k. Exit 0 if there is a candidate, 1 if none.",
                 ["iomface identify probe.jpg", "iomface identify probe.jpg --top_k 1 --json"]),
    "revoke": ("Revoke every active template of a subject.",
               "Needs the current token with a fresh photo (--token_file F --proof PHOTO) or the\n"
               "administrator secret. After a revocation the subject is enrolled again with enroll.",
               ["iomface revoke alice --token_file alice.token --proof probe.jpg",
                "iomface --admin_secret_file admin.secret revoke alice --expected_version 3"]),
    "reissue": ("Replace a subject's active templates by new ones under a new token.",
                "Same proof as revoke. A subject whose templates were revoked has none to replace: enroll\n"
                "it again instead.",
                ["iomface reissue alice a1.jpg --new_token_file new.token --token_file alice.token --proof probe.jpg"]),
    "list": ("List enrolled subjects.",
             "Active subjects; with --all also revoked ones, each with its status, enrolment and\n"
             "revocation dates and template count. Loads no model.",
             ["iomface list", "iomface list --all --json"]),
    "show": ("Show a subject's template metadata (no codes) and version.",
             "Exit 1 if the subject was never enrolled. Loads no model.",
             ["iomface show alice"]),
    "set-admin": ("Set (or, with the current one, replace) the administrator credential.",
                  "Keeps an HMAC verifier of the new secret in the store, never the secret.",
                  ["iomface set-admin --new_admin_secret_file admin.secret"]),
}


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="iomface", description=__doc__, allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands (iomface COMMAND --help for each)")

    def command(name: str) -> argparse.ArgumentParser:
        summary, details, examples = COMMAND_HELP[name]
        p = sub.add_parser(name, allow_abbrev=False, help=summary, description=f"{summary}\n\n{details}",
                           epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_common(p, top=False)
        return p

    def token_file(p, help: str = "file holding the subject's token on one line ('-': standard input)"):
        p.add_argument("--token_file", default=None, help=help)

    def proof(p):
        token_file(p, help="file holding the current token ('-': standard input); with --proof")
        p.add_argument("--proof", default=None, help="a fresh photo of the subject (with --token_file)")
        p.add_argument("--proof_embeddings", default=None,
                       help=".npz whose first row is the proof (with --allow_embeddings)")
        p.add_argument("--expected_version", type=int, default=None,
                       help="refuse if the subject's version (see show) is no longer N")

    p = command("compare")
    p.add_argument("photo_a", metavar="PHOTO_A", help="a photo (or, with --aligned, an aligned 112x112 crop)")
    p.add_argument("photo_b", metavar="PHOTO_B", help="the photo to compare it with")
    p = command("verify-pairs")
    p.add_argument("pairs_file", metavar="FILE", help="the list of pairs (see above)")
    p = command("enroll")
    p.add_argument("subject", metavar="SUBJECT", nargs="?", help="the subject id (omit with --from-folder)")
    p.add_argument("photos", metavar="PHOTO", nargs="*", help="photos of the subject (fused)")
    token_file(p)
    p.add_argument("--from-folder", "--from_folder", dest="from_folder", default=None, metavar="DIR",
                   help="enroll one subject per sub-folder of DIR")
    p.add_argument("--tokens_file", default=None, help="with --from-folder: SUBJECT<TAB>TOKEN lines (chmod 600)")
    p.add_argument("--new_tokens_file", default=None,
                   help="with --from-folder: write a new random token per enrolled subject here (created 0600)")
    p.add_argument("--embeddings", default=None, help=".npz whose 'embeddings' rows are the samples")
    p = command("reissue")
    p.add_argument("subject", metavar="SUBJECT", help="the subject id")
    p.add_argument("photos", metavar="PHOTO", nargs="*", help="new photos of the subject (fused)")
    p.add_argument("--new_token_file", required=True, help="file holding the new token ('-': standard input)")
    p.add_argument("--embeddings", default=None, help=".npz whose 'embeddings' rows are the new samples")
    proof(p)
    p = command("verify")
    p.add_argument("subject", metavar="SUBJECT", help="the subject id")
    p.add_argument("photo", metavar="PHOTO", nargs="?", help="the probe photo")
    token_file(p)
    p.add_argument("--embeddings", default=None, help=".npz whose first row is the probe")
    p = command("identify")
    p.add_argument("photo", metavar="PHOTO", nargs="?", help="the probe photo")
    p.add_argument("--top_k", type=int, default=5, help="at most this many candidates (default 5)")
    p.add_argument("--embeddings", default=None, help=".npz whose first row is the probe")
    p = command("revoke")
    p.add_argument("subject", metavar="SUBJECT", help="the subject id")
    proof(p)
    p = command("list")
    p.add_argument("--all", action="store_true", help="include revoked subjects, with status and dates")
    p = command("show")
    p.add_argument("subject", metavar="SUBJECT", help="the subject id")
    p = command("set-admin")
    p.add_argument("--new_admin_secret_file", required=True,
                   help="file holding the new administrator secret (chmod 600); replacing one needs the "
                        "current one (--admin_secret_file or $IOMFACE_ADMIN_SECRET)")
    return parser


# ---------------------------------------------------------------------------- checks (no model)
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
            raise InvalidInputError(f"--{option} needs --allow_embeddings: raw embeddings bypass the face "
                                    "pipeline, for research and testing only")
    if args.far is not None and args.threshold is not None:
        raise InvalidInputError("give --far or --threshold, not both")
    if args.far is not None and not 0 < args.far < 1:
        raise InvalidInputError(f"--far must be a FAR in (0, 1), got {args.far!r}")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise InvalidInputError(f"--threshold must be a similarity in [0, 1], got {args.threshold!r}")
    if args.command == "identify" and args.top_k < 1:
        raise InvalidInputError(f"--top_k must be at least 1, got {args.top_k}")
    if args.command == "enroll":
        if args.from_folder is not None:
            if args.subject is not None or args.photos or args.embeddings is not None:
                raise InvalidInputError("enroll --from-folder DIR takes no SUBJECT, PHOTO or --embeddings: "
                                        "each sub-folder of DIR is a subject")
            if args.token_file is not None:
                raise InvalidInputError("enroll --from-folder: one token per subject: use --tokens_file "
                                        "(SUBJECT<TAB>TOKEN lines) or --new_tokens_file, not --token_file")
            if (args.tokens_file is None) == (args.new_tokens_file is None):
                raise InvalidInputError("enroll --from-folder needs one of --tokens_file FILE (existing tokens, "
                                        "SUBJECT<TAB>TOKEN lines) and --new_tokens_file FILE (new random tokens "
                                        "written there)")
        else:
            if args.tokens_file is not None or args.new_tokens_file is not None:
                raise InvalidInputError("--tokens_file and --new_tokens_file go with --from-folder")
            if args.subject is None:
                raise InvalidInputError("enroll: give SUBJECT PHOTO [PHOTO ...] (or --from-folder DIR)")
            if args.token_file is None:
                raise InvalidInputError("enroll SUBJECT needs --token_file FILE (the subject's token on one "
                                        "line; '-' reads it from standard input)")
    if args.command == "verify" and args.token_file is None:
        raise InvalidInputError("verify needs --token_file FILE (the subject's token on one line; '-' reads "
                                "it from standard input)")
    if args.command in ("revoke", "reissue"):
        if args.proof is not None and args.proof_embeddings is not None:
            raise InvalidInputError(f"{args.command}: give --proof or --proof_embeddings, not both")
        has_face = args.proof is not None or args.proof_embeddings is not None
        if args.token_file is not None and not has_face:
            raise InvalidInputError(f"{args.command}: --token_file is a proof together with a fresh photo "
                                    "of the face: add --proof PHOTO")
        if has_face and args.token_file is None:
            raise InvalidInputError(f"{args.command}: --proof needs the current token: add --token_file")


class Request:
    """Everything a command needs, read and checked before any model loads."""

    def __init__(self, args, stdin=None):
        from iom.service.errors import InvalidInputError
        from iom.service.pipeline import Pipeline
        from iom.service.store import check_subject_id

        self.args = args
        _check_options(args)
        self.model = Pipeline.shipped(args.model)             # the names, before anything loads
        size = self.model["input_size"] if args.aligned else None
        self.location = self.secret = self.admin = self.token = self.new_token = None
        self.proof: dict = {}
        self.subjects: list[tuple[str, list[str]]] = []
        self.tokens: dict[str, bytes] = {}
        cmd = args.command
        if getattr(args, "subject", None) is not None:
            args.subject = check_subject_id(args.subject)
        if cmd == "compare":
            self.photos = check_photo_files([args.photo_a, args.photo_b], "photo", size)
            return
        if cmd == "verify-pairs":
            self.pairs = read_pairs_file(args.pairs_file)
            unique = list(dict.fromkeys(p for a, b, _ in self.pairs for p in (a, b)))
            self.photos = check_photo_files(unique, f"photo (in {args.pairs_file})", size)
            return
        self.location = store_location(args.db)
        self.secret = app_secret(args)
        self.admin = admin_secret(args)
        if cmd not in CREATING_COMMANDS:
            require_existing_store(self.location, cmd)
        if cmd == "reissue":                 # stdin order: the current token, then the new one
            self.token = read_token(args.token_file, "--token_file", stdin) if args.token_file else None
            self.new_token = read_token(args.new_token_file, "--new_token_file", stdin)
        elif getattr(args, "token_file", None) is not None:
            self.token = read_token(args.token_file, "--token_file", stdin)
        if cmd in ("revoke", "reissue"):
            if self.token is not None:
                self.proof = dict(user_token=self.token)
            elif self.admin is not None:
                self.proof = dict(admin_secret=self.admin)
            else:
                raise InvalidInputError(f"{cmd} needs a proof: the current token and a fresh photo "
                                        "(--token_file FILE --proof PHOTO), or the administrator secret "
                                        "(--admin_secret_file FILE or IOMFACE_ADMIN_SECRET)")
        self.embeddings = _embeddings(getattr(args, "embeddings", None))
        photos: list[str] = []
        if cmd == "enroll" and args.from_folder is not None:
            self.subjects = subject_folders(args.from_folder)
            photos = [p for _, ps in self.subjects for p in ps]
            if args.tokens_file is not None:
                self.tokens = read_tokens_table(args.tokens_file)
                missing = [s for s, _ in self.subjects if s not in self.tokens]
                if missing:
                    raise InvalidInputError(f"--tokens_file {args.tokens_file} has no token for "
                                            f"{len(missing)} subject(s) of the folder: {', '.join(missing[:5])}")
            else:
                self._check_new_file(args.new_tokens_file, "--new_tokens_file")
        elif cmd in ("enroll", "reissue"):
            if self.embeddings is None and not args.photos:
                raise InvalidInputError(f"{cmd}: give photos or --embeddings")
            photos = list(args.photos)
        elif cmd in ("verify", "identify"):
            if self.embeddings is None and args.photo is None:
                raise InvalidInputError(f"{cmd}: give a photo or --embeddings")
            photos = [] if args.photo is None else [args.photo]
        if cmd in ("revoke", "reissue") and "user_token" in self.proof:
            proof_emb = _embeddings(args.proof_embeddings)
            if proof_emb is not None:
                self.proof["proof_embedding"] = proof_emb[:1]
            else:
                self.proof["proof_photo"] = check_photo_files([args.proof], "--proof photo", size)[0]
        self.photos = check_photo_files(photos, "photo", size)
        if cmd == "set-admin":
            self.new_admin = read_secret_file(args.new_admin_secret_file, "--new_admin_secret_file")
        self._check_tokens()

    @staticmethod
    def _check_new_file(path: str, option: str) -> None:
        from iom.service.errors import InvalidInputError

        if os.path.lexists(path):
            raise InvalidInputError(f"{option} {path}: the file exists; it is not overwritten (tokens in it "
                                    "may be the only copy): give a new file name")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise InvalidInputError(f"{option} {path}: cannot create a file in {folder}")

    def _check_tokens(self) -> None:
        """New tokens must meet the default policy's strength before anything loads."""
        from iom.service.policy import ServicePolicy, check_token_strength

        bits = ServicePolicy().min_token_bits
        if self.args.command == "enroll" and self.token is not None:
            check_token_strength(self.token, bits, "the token (--token_file)")
        if self.new_token is not None:
            check_token_strength(self.new_token, bits, "the new token (--new_token_file)")
        for subject, token in self.tokens.items():
            check_token_strength(token, bits, f"the token of {subject!r} (--tokens_file)")


# ---------------------------------------------------------------------------- quiet output
class _Quiet:
    """While active (unless verbose): native stderr (fd 2: TensorFlow's C++ logs) goes to
    /dev/null, Python warnings and TensorFlow/absl Python logs are off; Python-level messages
    of this command still reach the real standard error."""

    def __init__(self, verbose: bool):
        self.verbose = verbose

    def __enter__(self):
        import logging
        import warnings

        self._warnings = warnings.catch_warnings()
        self._saved = None
        if self.verbose:
            return self
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        for name in ("tensorflow", "absl", "jax", "h5py"):
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            real = sys.stderr.fileno() == 2
        except (AttributeError, OSError, ValueError):
            real = False
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._stream = None
        if real:                         # keep Python's stderr on the real one (a copy of fd 2)
            self._stream = sys.stderr
            sys.stderr = os.fdopen(os.dup(self._saved), "w", buffering=1, encoding="utf-8", errors="replace")
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        return self

    def __exit__(self, *exc):
        if self._saved is None:
            return False
        if self._stream is not None:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = self._stream
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._warnings.__exit__(*exc)
        return False


def _progress(total: int, desc: str, verbose: bool):
    """A tqdm bar on standard error when it is a terminal (or with --verbose), else none."""
    from tqdm import tqdm

    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return tqdm(total=total, desc=desc, unit="item", disable=not (tty or verbose), file=sys.stderr,
                leave=False)


def _say(args, message: str) -> None:
    if args.verbose:
        print(f"[iomface] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- the commands
def _operating_point(args, request):
    from iom.service.calibration import load_calibration, select_operating_point
    from iom.service.errors import InvalidInputError

    info = request.model
    if info["calibration"] is None:
        raise InvalidInputError(f"hasher {args.model!r} has no calibration.json: no operating point to decide at")
    cal = load_calibration(info["calibration"], info["m"], info["q"])
    return cal, select_operating_point(cal, args.far, args.threshold)


def _load_pipeline(args, request):
    from iom.service.pipeline import Pipeline

    start = time.perf_counter()
    pipeline = Pipeline.from_pretrained(args.model, align=not args.aligned)
    _say(args, f"model {pipeline.model_id} (m={pipeline.hasher.m}, q={pipeline.hasher.q}) from "
               f"{request.model['folder']}, stage 1 {request.model['stage1_model']}, "
               f"{'no alignment (--aligned)' if args.aligned else 'MTCNN alignment'}; loaded in "
               f"{time.perf_counter() - start:.1f} s")
    return pipeline


def _codes_of_photos(pipeline, photos, args, desc: str) -> dict:
    """``{photo: code or error message}``, one photo at a time (a bad photo fails alone)."""
    from arcface.errors import IomfaceError

    out = {}
    with _progress(len(photos), desc, args.verbose) as bar:
        for photo in photos:
            try:
                out[photo] = pipeline.hasher.encode(pipeline.embed_photos([photo]), None)[0]
            except IomfaceError as e:
                out[photo] = _one_line(str(e))
            bar.update(1)
    return out


def _compare(args, request) -> tuple[object, int]:
    cal, point = _operating_point(args, request)
    pipeline = _load_pipeline(args, request)
    codes = pipeline.hasher.encode(pipeline.embed_photos(request.photos), None)
    similarity = float((codes[0] == codes[1]).mean())
    accepted = similarity >= point.threshold
    return ({"photo_a": args.photo_a, "photo_b": args.photo_b, "similarity": similarity, "accepted": accepted,
             "operating_point": point.to_dict()}, EXIT_OK if accepted else EXIT_REJECTED)


def _verify_pairs(args, request) -> tuple[object, int]:
    cal, point = _operating_point(args, request)
    pipeline = _load_pipeline(args, request)
    start = time.perf_counter()
    codes = _codes_of_photos(pipeline, request.photos, args, "photos")
    _say(args, f"{len(request.photos)} photos encoded in {time.perf_counter() - start:.1f} s")
    results = []
    for a, b, same in request.pairs:
        item = {"photo_a": a, "photo_b": b}
        if same is not None:
            item["same"] = same
        bad = [f"{p}: {codes[p]}" for p in (a, b) if isinstance(codes[p], str)]
        if bad:
            item["error"] = "; ".join(bad)
        else:
            item["similarity"] = float((codes[a] == codes[b]).mean())
            item["accepted"] = item["similarity"] >= point.threshold
        results.append(item)
    done = [r for r in results if "error" not in r]
    summary = {"pairs": len(results), "compared": len(done), "failed": len(results) - len(done),
               "accepted": sum(r["accepted"] for r in done), "operating_point": point.to_dict()}
    genuine = [r for r in done if r.get("same") is True]
    impostor = [r for r in done if r.get("same") is False]
    if genuine:
        summary["genuine"] = len(genuine)
        summary["tar"] = sum(r["accepted"] for r in genuine) / len(genuine)
    if impostor:
        summary["impostor"] = len(impostor)
        summary["far"] = sum(r["accepted"] for r in impostor) / len(impostor)
    return {"results": results, "summary": summary}, EXIT_OK if len(done) == len(results) else EXIT_REJECTED


class _StoreGuard:
    """Opens the store; for a SQLite database this command created, removes it again (with its
    -wal/-shm files, the folder made for it and its witness) if the command fails, so a failed
    command never leaves a database behind."""

    def __init__(self, location: str, witness: str):
        self.location, self.witness = location, witness
        path = sqlite_file(location)
        self.path = None if path is None else os.path.abspath(path)
        self.fresh = self.path is not None and not os.path.lexists(self.path)
        self.folder_fresh = self.fresh and not os.path.isdir(os.path.dirname(self.path))
        self.witness_fresh = not os.path.lexists(witness)
        self.keep = False

    def __enter__(self):
        from iom.service.stores import open_store

        try:
            self.store = open_store(self.location)
        except BaseException:
            self._cleanup()
            raise
        return self.store

    def __exit__(self, exc_type, exc, tb):
        self.store.close()
        if exc_type is not None and not self.keep:
            self._cleanup()
        return False

    def _cleanup(self) -> None:
        if not self.fresh:
            return
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(self.path + suffix)
            except FileNotFoundError:
                pass
        if self.folder_fresh:
            try:
                os.rmdir(os.path.dirname(self.path))
            except OSError:
                pass
        if self.witness_fresh:
            try:
                os.unlink(self.witness)
            except FileNotFoundError:
                pass


def _check_subject_before_loading(store, args) -> None:
    """revoke / reissue / show of a subject that has no active template: said now, with what to
    do, before the model loads (these commands reveal enrolment anyway; verify does not)."""
    from iom.service.errors import RevokedTemplateError, UnknownSubjectError

    try:
        store.active(args.subject)
    except RevokedTemplateError as e:
        if args.command == "reissue":
            raise RevokedTemplateError(f"{e}; reissue replaces active templates: enroll {args.subject!r} again "
                                       f"(iomface enroll {args.subject} PHOTO --token_file FILE)",
                                       args.subject) from None
        raise
    except UnknownSubjectError as e:
        if args.command == "reissue":
            raise UnknownSubjectError(f"{e}: enroll it first (iomface enroll {args.subject} PHOTO "
                                      "--token_file FILE)", args.subject) from None
        raise


def _subject_rows(store, include_revoked: bool) -> list:
    from iom.service.service import TemplateService

    if not include_revoked:
        return store.subjects(False)
    rows = []
    for subject in store.subjects(True):
        history = TemplateService.describe(store, subject)
        active = [t for t in history if t["revoked_at"] is None]
        revoked = [t["revoked_at"] for t in history if t["revoked_at"] is not None]
        rows.append({"subject": subject, "status": "active" if active else "revoked",
                     "enrolled_at": min(t["created_at"] for t in (active or history)),
                     "revoked_at": None if active else max(revoked), "templates": len(active),
                     "version": history[0]["version"] if history else 0})
    return rows


def _store_command(args, request) -> tuple[object, int]:
    from iom.service.policy import ServicePolicy
    from iom.service.template_keys import row_key

    witness = witness_path(args.witness, request.location)
    with _StoreGuard(request.location, witness) as store:
        cmd = args.command
        if cmd in MODEL_FREE_COMMANDS:
            store.authenticate(row_key(request.secret), witness)
            if cmd == "list":
                return _subject_rows(store, args.all), EXIT_OK
            from iom.service.service import TemplateService
            return TemplateService.describe(store, args.subject), EXIT_OK
        if cmd in ("revoke", "reissue"):
            store.authenticate(row_key(request.secret), witness)
            _check_subject_before_loading(store, args)
        if cmd == "verify":
            _operating_point(args, request)          # a bad --far fails before the model loads
        pipeline = _load_pipeline(args, request)
        from iom.service.service import TemplateService

        service = TemplateService(pipeline, store, request.secret,
                                  policy=ServicePolicy(allow_embeddings=args.allow_embeddings),
                                  witness=witness, far=args.far, threshold=args.threshold)
        if cmd == "set-admin":
            service.set_admin_credential(request.new_admin, current_secret=request.admin)
            return {"admin_credential": "set"}, EXIT_OK
        if cmd == "enroll" and args.from_folder is not None:
            return _enroll_folder(args, request, service)
        if cmd == "enroll":
            ids = service.enroll(args.subject, request.photos or None, request.embeddings,
                                 user_token=request.token)
            return {"subject": args.subject, "templates": _templates(ids)}, EXIT_OK
        if cmd == "reissue":
            ids = service.reissue(args.subject, request.photos or None, request.new_token, embeddings=request.embeddings,
                                  expected_version=args.expected_version, **request.proof)
            return {"subject": args.subject, "templates": _templates(ids)}, EXIT_OK
        if cmd == "revoke":
            n = service.revoke(args.subject, expected_version=args.expected_version, **request.proof)
            return {"subject": args.subject, "revoked": n}, EXIT_OK
        probe = None if request.embeddings is None else request.embeddings[:1]
        if cmd == "verify":
            d = service.verify(args.subject, args.photo, request.token, embedding=probe)
            return ({"subject": args.subject, "accepted": bool(d.accepted),
                     "operating_point": service.operating_point.to_dict()},
                    EXIT_OK if d.accepted else EXIT_REJECTED)
        hits = service.identify(args.photo, args.top_k, embedding=probe)
        out = [{"subject": c.subject_id, "rank": c.rank} for c in hits]
        return ({"candidates": out, "operating_point": service.identification_point()},
                EXIT_OK if out else EXIT_REJECTED)


def _templates(ids) -> list[dict]:
    """Template ids with their purpose: the service stores a verification template (keyed by
    the token) and an identification template per enrolment, in that order."""
    purposes = ("verify", "identify")
    return [{"id": int(i), "purpose": purposes[k] if k < len(purposes) else "?"} for k, i in enumerate(ids)]


def _enroll_folder(args, request, service) -> tuple[object, int]:
    from arcface.errors import IomfaceError
    from iom.service.policy import generate_token

    results, out = [], None
    try:
        with _progress(len(request.subjects), "enrolling", args.verbose) as bar:
            for subject, photos in request.subjects:
                token = request.tokens.get(subject) or generate_token().encode()
                item = {"subject": subject, "photos": len(photos)}
                try:
                    item["templates"] = _templates(service.enroll(subject, photos, user_token=token))
                    if args.new_tokens_file is not None:
                        if out is None:
                            out = create_private_file(args.new_tokens_file, "--new_tokens_file")
                        out.write(f"{subject}\t{token.decode()}\n")
                        out.flush()
                        os.fsync(out.fileno())
                except IomfaceError as e:
                    item["error"] = _one_line(str(e))
                results.append(item)
                bar.update(1)
    finally:
        if out is not None:
            out.close()
    enrolled = sum("error" not in r for r in results)
    summary = {"subjects": len(results), "enrolled": enrolled, "failed": len(results) - enrolled}
    if args.new_tokens_file is not None and enrolled:
        summary["new_tokens_file"] = args.new_tokens_file
    if not enrolled:
        from iom.service.errors import InvalidInputError

        raise InvalidInputError(f"enroll --from-folder: no subject could be enrolled (first failure: "
                                f"{results[0]['subject']}: {results[0]['error']})")
    return {"results": results, "summary": summary}, EXIT_OK if enrolled == len(results) else EXIT_REJECTED


def run(args, stdin=None, request: Request | None = None) -> tuple[object, int]:
    """``(result, exit code)`` of the parsed command (``request``: its inputs, already read and
    checked); typed errors propagate."""
    request = Request(args, stdin) if request is None else request
    with _Quiet(args.verbose):
        if args.command == "compare":
            return _compare(args, request)
        if args.command == "verify-pairs":
            return _verify_pairs(args, request)
        return _store_command(args, request)


# ---------------------------------------------------------------------------- output
def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def _point_text(point: dict) -> str:
    if point["far_target"] is not None:
        head = f"at FAR {point['far_target']:g} (threshold {point['threshold']:.4f})"
    else:
        head = f"at threshold {point['threshold']:.4f}"
    tar = "unknown" if point["expected_tar"] is None else f"{point['expected_tar']:.3f}"
    far = "unknown" if point["expected_far"] is None else f"{point['expected_far']:.1e}"
    return f"{head}: expected TAR {tar}, FAR {far} on {point['calibration_set']}"


def format_result(command: str, result) -> str:
    """The human-readable lines of a command's result."""
    if command == "compare":
        verdict = "same person" if result["accepted"] else "different people"
        return (f"{verdict}: similarity {result['similarity']:.3f}, "
                f"{'accepted' if result['accepted'] else 'rejected'} {_point_text(result['operating_point'])}")
    if command == "verify-pairs":
        lines = []
        for r in result["results"]:
            label = "" if "same" not in r else ("  [same]" if r["same"] else "  [diff]")
            if "error" in r:
                lines.append(f"{r['photo_a']}  {r['photo_b']}  error: {r['error']}{label}")
            else:
                lines.append(f"{r['photo_a']}  {r['photo_b']}  similarity {r['similarity']:.3f}  "
                             f"{'accepted' if r['accepted'] else 'rejected'}{label}")
        s = result["summary"]
        text = (f"{s['pairs']} pairs: {s['compared']} compared, {s['accepted']} accepted, {s['failed']} failed; "
                f"{_point_text(s['operating_point'])}")
        if "tar" in s:
            text += f"\nmeasured on this list: TAR {s['tar']:.3f} ({s['genuine']} same-person pairs)"
        if "far" in s:
            text += f"{';' if 'tar' in s else chr(10) + 'measured on this list:'} FAR {s['far']:.3f} " \
                    f"({s['impostor']} different-person pairs)"
        return "\n".join(lines + [text])
    if command == "verify":
        return (f"{result['subject']}: {'accepted' if result['accepted'] else 'rejected'} "
                f"{_point_text(result['operating_point'])}")
    if command == "identify":
        p = result["operating_point"]
        if p["threshold"] is None:
            return "no match (no enrolled subject)"
        tar = "unknown" if p["expected_tar"] is None else f"{p['expected_tar']:.3f}"
        point = (f"(1:N threshold {p['threshold']:.4f} for {p['gallery_size']} templates at FPIR "
                 f"{p['fpir_target']:g}: expected TAR {tar} on {p['calibration_set']})")
        if not result["candidates"]:
            return f"no match {point}"
        return "\n".join([f"{c['rank']}. {c['subject']}" for c in result["candidates"]] + [point])
    if command in ("enroll", "reissue") and "templates" in result:
        parts = ", ".join(f"{'verification' if t['purpose'] == 'verify' else 'identification'} template "
                          f"#{t['id']}" for t in result["templates"])
        return f"{'enrolled' if command == 'enroll' else 'reissued'} {result['subject']}: {parts}"
    if command == "enroll":
        lines = []
        for r in result["results"]:
            if "error" in r:
                lines.append(f"{r['subject']}: error: {r['error']}")
            else:
                lines.append(f"{r['subject']}: enrolled from {r['photos']} photo(s), templates "
                             + ", ".join(f"#{t['id']}" for t in r["templates"]))
        s = result["summary"]
        text = f"{s['subjects']} subjects: {s['enrolled']} enrolled, {s['failed']} failed"
        if "new_tokens_file" in s:
            text += f"; their new tokens are in {s['new_tokens_file']} (keep it private; hand each to its subject)"
        return "\n".join(lines + [text])
    if command == "revoke":
        return (f"revoked {result['subject']}: {result['revoked']} template(s); enroll again with "
                f"iomface enroll {result['subject']} PHOTO --token_file FILE")
    if command == "list":
        if result and isinstance(result[0], dict):
            width = max(len(r["subject"]) for r in result)
            return "\n".join(f"{r['subject']:<{width}}  {r['status']:<7}  enrolled {r['enrolled_at']}"
                             + (f"  revoked {r['revoked_at']}" if r["revoked_at"] else "") for r in result)
        return "\n".join(result) if result else "(no enrolled subject)"
    if command == "show":
        return "\n".join("  ".join(f"{k}={v}" for k, v in t.items()) for t in result)
    if isinstance(result, dict):
        return "  ".join(f"{k}={v}" for k, v in result.items())
    return str(result)


def main(argv=None) -> int:
    """The ``iomface`` command; returns its exit code (see the module doc)."""
    from arcface.errors import IomfaceError
    from iom.service.errors import UnknownSubjectError
    from iom.service.stores import scrub_dsn

    argv = sys.argv[1:] if argv is None else list(argv)
    literal = literal_secret_option(argv)
    if literal is not None:
        print(f"error: {literal} is refused: a secret on the command line can be read by every user of "
              f"this machine (ps, /proc/PID/cmdline) and stays in the shell history; use "
              f"{LITERAL_SECRET_OPTIONS[literal]}", file=sys.stderr)
        return EXIT_ERROR
    args = _parser().parse_args(argv)
    code = EXIT_ERROR
    try:
        request = Request(args)                   # every input checked before Keras is imported
        if not args.verbose:
            from arcface.cli import import_backend_quietly

            import_backend_quietly()
        result, code = run(args, request=request)
    except (IomfaceError, OSError) as e:
        message = str(e)
        for dsn in (args.db, os.environ.get("IOMFACE_DB")):
            message = scrub_dsn(message, dsn)
        print(f"error: {_one_line(message)}", file=sys.stderr)
        return EXIT_REJECTED if isinstance(e, UnknownSubjectError) else EXIT_ERROR
    print(json.dumps(result) if args.json else format_result(args.command, result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
