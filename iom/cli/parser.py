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

The same over HTTP (see the README, "HTTP service"):

    iomface add-key NAME --role admin|client --keys_file F      a new API key (printed once, stored hashed)
    iomface serve --keys_file F [--host 127.0.0.1 --port 8080]  the template service on HTTP

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

from iom.cli.inputs import DEFAULT_DB
from iom.cli.output import EXIT_ERROR
from iom.defaults import DEFAULT_HASHER

COMMANDS = ("compare", "verify-pairs", "enroll", "verify", "identify", "revoke", "reissue", "list",
            "show", "set-admin", "serve", "add-key", "remove-key", "list-keys", "models")
#: commands about the HTTP server's API keys (no model, no store, no secret)
KEY_COMMANDS = ("add-key", "remove-key", "list-keys")


class _Parser(argparse.ArgumentParser):
    """argparse with errors on one ``error:`` line (exit 2) that never echo argument values."""

    def error(self, message: str):
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            options = [w.split("=", 1)[0] for w in message[len(prefix):].split() if w.startswith("-")]
            message = prefix + (" ".join(options) + " " if options else "") + "(values not shown)"
        self.exit(EXIT_ERROR, f"error: {self.prog}: {message}\n")


class _CommandParser(_Parser):
    """A command's parser: options may come between positional arguments
    (``enroll tracy --token_file t.token photo.jpg``), as :meth:`parse_known_intermixed_args`
    parses them (which calls this method again: the flag keeps it from recursing)."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


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
    g.add_argument("--runtime", choices=("auto", "keras", "tflite"), default=d("auto"),
                   help="what computes the face embedding: 'tflite' the stage-1 model's embedder.tflite (the "
                        "same codes, several times faster), 'keras' its Keras backbone, 'auto' (default) tflite "
                        "when the model folder's runtime.json matches its weights and records every code "
                        "identical, else keras. --verbose says which loaded and why")
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
               "1 if rejected. --batch FILE verifies every SUBJECT<TAB>PHOTO line with one model load, a\n"
               "line each and a summary; exit 0 if every line was answered, 1 if some failed (no face...).",
               ["iomface verify alice probe.jpg --token_file alice.token",
                "iomface verify alice probe.jpg --token_file - --far 1e-4 <<< \"$ALICE_TOKEN\"",
                "iomface verify --batch probes.tsv --tokens_file tokens.tsv   # SUBJECT<TAB>PHOTO lines"]),
    "identify": ("Find the enrolled subjects matching a photo (1:N).",
                 "Candidates accepted at the 1:N threshold of the gallery's size (FPIR 1%), best first, at\n"
                 "most --top_k. Exit 0 if there is a candidate, 1 if none. --batch FILE identifies every photo\n"
                 "listed in FILE (a line each, one model load; exit 0 if every line was answered). --cluster\n"
                 "searches the gallery in --shards shards held by the workers of a Ray cluster (same answers).",
                 ["iomface identify probe.jpg", "iomface identify probe.jpg --top_k 1 --json",
                  "iomface identify --batch photos.txt                            # a photo per line",
                  "iomface identify probe.jpg --cluster local --shards 2"]),
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
    "serve": ("Serve the template store over HTTP (FastAPI under uvicorn).",
              "Loads the model once and answers enrol / verify / identify / revoke / reissue / list /\n"
              "health / metrics requests; OpenAPI schema at /openapi.json. Requests authenticate with an API\n"
              "key (Authorization: Bearer KEY) from --keys_file: admin keys enrol, revoke, reissue and list;\n"
              "client keys verify and identify. Answers are decisions and ranks; similarities only to admin\n"
              "keys with --admin_scores. Logs are JSON lines on standard error, without tokens, keys or\n"
              "photos. Listens on 127.0.0.1 by default: put a TLS reverse proxy in front (README).",
              ["iomface serve --db templates.db --keys_file keys.json",
               "iomface serve --keys_file keys.json --cluster 10.0.0.5:6379 --shards 8",
               "IOMFACE_APP_SECRET=... iomface serve --keys_file keys.json --port 8443 --tls_cert c.pem --tls_key k.pem"]),
    "device-key": ("Print the code key of a device that sends codes instead of photos (serve --device_codes).",
                   "A device running the exported model relabels each code with this key before sending it, with\n"
                   "the API key of the same NAME; the service inverts it. A code is never accepted un-keyed (that\n"
                   "code is the same in every deployment: a universal template). Derived from the application\n"
                   "secret: the same NAME gives the same key; provision it to that device only. Loads no model.",
                   ["iomface device-key door-3 --json"]),
    "add-key": ("Create an API key for the HTTP service (printed once; the file keeps its SHA-256).",
                "The key file is JSON, created 0600. A running server picks the new key up without a restart.",
                ["iomface add-key desk-1 --role admin --keys_file keys.json",
                 "iomface add-key door-3 --role client --keys_file keys.json --json"]),
    "remove-key": ("Remove an API key from the key file (a running server stops accepting it).", "",
                   ["iomface remove-key door-3 --keys_file keys.json"]),
    "list-keys": ("List the API keys' names, roles and creation dates (never the keys).", "",
                  ["iomface list-keys --keys_file keys.json"]),
    "models": ("List the shipped models: stage-1 networks and hashers (no database, no secret).",
               "Every folder of the shipped models/: for a stage-1 model its backbone, embedding and input\n"
               "size, weights size (MB), LFW accuracy (10-fold, lfw_112) and terms, from its config.yaml and\n"
               "card.json; for a hasher its stage-1 model, m x q and whether it is calibrated, from\n"
               "hasher.json and calibration.json. A fact no file states is shown as unknown; --json gives the\n"
               "list with the commands that made the figures. Loads no model. '*' marks the defaults.",
               ["iomface models", "iomface models --json"]),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="iomface", description=__doc__, allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser,
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
    p.add_argument("subject", metavar="SUBJECT", nargs="?", help="the subject id (omit with --batch)")
    p.add_argument("photo", metavar="PHOTO", nargs="?", help="the probe photo")
    token_file(p)
    p.add_argument("--embeddings", default=None, help=".npz whose first row is the probe")
    p.add_argument("--batch", default=None, metavar="FILE",
                   help="verify every SUBJECT<TAB>PHOTO line of FILE with one model load (tokens from --tokens_file)")
    p.add_argument("--tokens_file", default=None, help="with --batch: SUBJECT<TAB>TOKEN lines (chmod 600)")
    p = command("identify")
    p.add_argument("photo", metavar="PHOTO", nargs="?", help="the probe photo")
    p.add_argument("--batch", default=None, metavar="FILE",
                   help="identify every photo listed in FILE (one per line) with one model load")
    p.add_argument("--top_k", type=int, default=5, help="at most this many candidates (default 5)")
    p.add_argument("--embeddings", default=None, help=".npz whose first row is the probe")
    _gallery_options(p)
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
    p = command("serve")
    _serve_options(p)
    command("models")
    p = command("device-key")
    p.add_argument("name", metavar="NAME", help="the device's name: the name of the API key it uses")
    for name in KEY_COMMANDS:
        p = command(name)
        if name != "list-keys":
            p.add_argument("name", metavar="NAME", help="the key's name (who holds it: a desk, a door, an app)")
        if name == "add-key":
            p.add_argument("--role", required=True, choices=("admin", "client"),
                           help="admin: enrol, revoke, reissue, list; client: verify and identify")
        p.add_argument("--keys_file", default=None, help="the API key file (default $IOMFACE_KEYS_FILE)")
    return parser


def _gallery_options(p: argparse.ArgumentParser) -> None:
    from iom.search.galleries import DEFAULT_SHARDS

    p.add_argument("--cluster", default=None, metavar="local|ADDRESS",
                   help="search the identification gallery in shards on a Ray cluster: 'local' starts one on this "
                        "machine, HOST:PORT (or 'auto') joins a running one (default: in this process)")
    p.add_argument("--shards", type=int, default=None,
                   help=f"shards of the gallery on the cluster, each in a worker's memory (default {DEFAULT_SHARDS})")


def _serve_options(p: argparse.ArgumentParser) -> None:
    from iom.service.policy import ServicePolicy

    d = ServicePolicy()
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--keys_file", default=None, help="the API key file (default $IOMFACE_KEYS_FILE)")
    p.add_argument("--tls_cert", default=None, help="TLS certificate (PEM), with --tls_key: serve HTTPS")
    p.add_argument("--tls_key", default=None, help="TLS private key (PEM)")
    p.add_argument("--forwarded_allow_ips", default="",
                   help="comma-separated addresses of the reverse proxies whose X-Forwarded-For / "
                        "X-Forwarded-Proto headers are trusted for the client's address (default: none; "
                        "a header from anyone else is ignored)")
    p.add_argument("--admin_scores", action="store_true",
                   help="return similarities to admin keys (never to client keys): research deployments only")
    p.add_argument("--device_codes", action="store_true",
                   help="accept a provisioned device's code (the exported model's output relabelled with the key of "
                        "iomface device-key NAME, form field 'code', sent with the API key NAME) in place of photos, "
                        "so neither photo nor embedding leaves the device")
    p.add_argument("--max_photo_bytes", type=int, default=10 * 1024 * 1024, help="bytes per photo (default 10 MiB)")
    p.add_argument("--max_megapixels", type=float, default=25.0,
                   help="pixels per photo, from its header before decoding (default 25 megapixels)")
    p.add_argument("--max_photos", type=int, default=10, help="photos per enrolment (default 10)")
    p.add_argument("--max_detect_megapixels", type=float, default=1.0,
                   help="a raw photo is searched for its face at this size at most (the crop is cut from the "
                        "full photo): bounds the work any photo costs (default 1)")
    p.add_argument("--detect_seconds_per_minute", type=float, default=10.0,
                   help="seconds of face detection each API key may use in any minute; past it its raw photos "
                        "get 429 (aligned crops do not count); 0 for no budget (default 10)")
    p.add_argument("--op_threads", type=int, default=None,
                   help="threads one TensorFlow operation, or one TFLite interpreter (--runtime), may use "
                        "(default: $TF_NUM_INTRAOP_THREADS, else 1): requests run side by side on their own "
                        "cores, so a costly photo does not take every core from the others")
    p.add_argument("--detectors", type=int, default=2,
                   help="face detectors working in parallel; each caller has one raw photo aligned at a time "
                        "(default 2)")
    p.add_argument("--verify_per_minute", type=int, default=d.verify_per_minute,
                   help=f"verifications per API key and minute (default {d.verify_per_minute})")
    p.add_argument("--identify_per_minute", type=int, default=d.identify_per_minute,
                   help=f"identifications per API key and minute (default {d.identify_per_minute})")
    p.add_argument("--subject_verify_per_minute", type=int, default=d.subject_verify_per_minute,
                   help=f"verifications of one subject per minute, all keys (default {d.subject_verify_per_minute})")
    p.add_argument("--max_failures", type=int, default=d.max_failures,
                   help=f"failed verifications of a subject per window before 429 (default {d.max_failures})")
    p.add_argument("--failure_window_s", type=float, default=d.failure_window_s,
                   help=f"that window, seconds (default {d.failure_window_s:g})")
    p.add_argument("--log_level", default="info", choices=("debug", "info", "warning", "error"),
                   help="JSON log level (default info; debug also lets native libraries' own lines through)")
    _gallery_options(p)
