"""The inputs of one ``iomface`` command, read and checked before any model loads
(:class:`Request`): option combinations, secrets, tokens, the store's location, photos, pair
lists, enrolment folders and where the identification gallery lives (``--cluster``: a cluster
address that nothing answers at is refused here). Nothing here imports Keras or Ray or opens
a database."""

from __future__ import annotations

import os

from iom.cli.inputs import (admin_secret, app_secret, check_photo_files, check_port_free, read_pairs_file,
                            read_secret_file, read_token, read_tokens_table, require_existing_store,
                            require_store_folder, store_location, subject_folders, read_batch_file)

#: commands that may create a SQLite database (every other one needs an existing one)
CREATING_COMMANDS = ("enroll", "set-admin", "serve")


def _embeddings(path):
    if path is None:
        return None
    from arcface.embeddings_io import load_embeddings

    return load_embeddings(path).embeddings


def _check_options(args) -> None:
    """Option combinations, checked before anything is read or loaded."""
    from iom.errors import InvalidInputError

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
    if args.command == "serve":
        if not 0 <= args.port <= 65535:
            raise InvalidInputError(f"--port must be in 0..65535, got {args.port}")
        if (args.tls_cert is None) != (args.tls_key is None):
            raise InvalidInputError("give --tls_cert and --tls_key together")
        for option in ("tls_cert", "tls_key"):
            path = getattr(args, option)
            if path is not None and not os.path.isfile(path):
                raise InvalidInputError(f"--{option} {path}: no such file")
        if not 0 <= args.detect_seconds_per_minute <= 60 * args.detectors:
            raise InvalidInputError(f"--detect_seconds_per_minute must be in [0, 60 x --detectors], got "
                                    f"{args.detect_seconds_per_minute:g}")
        if args.op_threads is not None and args.op_threads < 1:
            raise InvalidInputError(f"--op_threads must be at least 1, got {args.op_threads}")
        if args.detectors < 1:
            raise InvalidInputError(f"--detectors must be at least 1, got {args.detectors}")
        if not 0.0002 <= args.max_detect_megapixels <= args.max_megapixels:
            raise InvalidInputError(f"--max_detect_megapixels must be in [0.0002, --max_megapixels "
                                    f"{args.max_megapixels:g}], got {args.max_detect_megapixels:g}")
    if args.command == "identify" and args.top_k < 1:
        raise InvalidInputError(f"--top_k must be at least 1, got {args.top_k}")
    if args.command in ("identify", "serve"):
        from iom.search.galleries import GallerySpec

        args.gallery = GallerySpec(getattr(args, "cluster", None), getattr(args, "shards", None))  # parsed only
    if args.command == "serve":                  # the options first, then the files and the port
        from iom.server.options import keys_file, trusted_proxies

        path = keys_file(args)
        if not os.path.isfile(path):
            raise InvalidInputError(f"--keys_file {path}: no such file (create it with: iomface add-key NAME "
                                    f"--role admin --keys_file {path})")
        trusted_proxies(args.forwarded_allow_ips)
        check_port_free(args.host, args.port)
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
    if args.command == "verify" and args.batch is None and args.token_file is None:
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
        from iom.errors import InvalidInputError
        from iom.service.pipeline import Pipeline
        from iom.store.records import check_subject_id

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
        if cmd == "device-key":
            self.secret = app_secret(args)
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
        else:
            require_store_folder(self.location)
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
        elif cmd in ("verify", "identify") and args.batch is not None:
            photos = self._read_batch(args)
        elif cmd in ("verify", "identify"):
            if self.embeddings is None and args.photo is None:
                raise InvalidInputError(f"{cmd}: give a photo or --embeddings")
            if cmd == "verify" and args.subject is None:
                raise InvalidInputError("verify: give SUBJECT PHOTO (or --batch FILE)")
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
        self.gallery = getattr(args, "gallery", None)
        if self.gallery is not None and self.gallery.sharded:
            from iom.search.galleries import check_reachable

            check_reachable(self.gallery.cluster)     # a socket connect: a head that is not there fails now

    def _read_batch(self, args) -> list[str]:
        """``--batch``: its lines (``self.batch``), the tokens of every subject to verify
        (``--tokens_file``), checked before anything loads; the photos to check."""
        from iom.errors import InvalidInputError

        given = [o for o, v in (("SUBJECT", getattr(args, "subject", None)), ("PHOTO", args.photo),
                                ("--embeddings", args.embeddings)) if v is not None]
        if given:
            raise InvalidInputError(f"{args.command} --batch takes no {', '.join(given)}: every line of the file is one")
        columns = ("SUBJECT", "PHOTO") if args.command == "verify" else ("PHOTO",)
        self.batch = read_batch_file(args.batch, columns)
        if args.command == "verify":
            if args.tokens_file is None:
                raise InvalidInputError("verify --batch needs --tokens_file (SUBJECT<TAB>TOKEN lines, chmod 600)")
            self.tokens = read_tokens_table(args.tokens_file)
            missing = sorted({s for s, _ in self.batch} - set(self.tokens))
            if missing:
                raise InvalidInputError(f"--tokens_file {args.tokens_file} has no token for {len(missing)} subject(s) "
                                        f"of the batch: {', '.join(missing[:5])}")
        return [item[-1] for item in self.batch]

    @staticmethod
    def _check_new_file(path: str, option: str) -> None:
        from iom.errors import InvalidInputError

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
