"""What each ``iomface`` command does once its inputs are checked (:func:`run`): comparing
photos, batches with one model load, and the template-store commands, with quiet output and
a store that a failed command never leaves behind."""

from __future__ import annotations

import os
import sys
import time

from iom.cli.inputs import create_private_file, sqlite_file, witness_path
from iom.cli.loading import load_pipeline, operating_point
from iom.cli.output import EXIT_ERROR, EXIT_OK, EXIT_REJECTED, one_line, say  # noqa: F401 (re-exported)
from iom.cli.request import Request

#: commands that load no model
MODEL_FREE_COMMANDS = ("list", "show", "set-admin", "device-key", "models")


def needs_model(args) -> bool:
    """Whether the parsed command loads the face model (and so imports Keras): not the
    store-only commands, nor a revoke proved by the administrator secret."""
    if args.command in MODEL_FREE_COMMANDS:
        return False
    if args.command == "revoke" and getattr(args, "token_file", None) is None:
        return False
    return True


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


def _codes_of_photos(pipeline, photos, args, desc: str) -> dict:
    """``{photo: code or error message}``, one photo at a time (a bad photo fails alone)."""
    from arcface.errors import IomfaceError

    out = {}
    with _progress(len(photos), desc, args.verbose) as bar:
        for photo in photos:
            try:
                out[photo] = pipeline.hasher.encode(pipeline.embed_photos([photo]), None)[0]
            except IomfaceError as e:
                out[photo] = one_line(str(e))
            bar.update(1)
    return out


def _compare(args, request) -> tuple[object, int]:
    cal, point = operating_point(args, request)
    pipeline = load_pipeline(args, request)
    similarity = pipeline.similarity(*request.photos)
    accepted = similarity >= point.threshold
    return ({"photo_a": args.photo_a, "photo_b": args.photo_b, "similarity": similarity, "accepted": accepted,
             "operating_point": point.to_dict()}, EXIT_OK if accepted else EXIT_REJECTED)


def _verify_pairs(args, request) -> tuple[object, int]:
    cal, point = operating_point(args, request)
    pipeline = load_pipeline(args, request)
    start = time.perf_counter()
    codes = _codes_of_photos(pipeline, request.photos, args, "photos")
    say(args, f"{len(request.photos)} photos encoded in {time.perf_counter() - start:.1f} s")
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
        from iom.store.factory import open_store

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
    from iom.errors import RevokedTemplateError, UnknownSubjectError

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


def _store_command(args, request) -> tuple[object, int]:
    from iom.service.policy import ServicePolicy
    from iom.service.template_keys import row_key

    witness = witness_path(args.witness, request.location)
    with _StoreGuard(request.location, witness) as store:
        cmd = args.command
        store.authenticate(row_key(request.secret), witness)   # a wrong secret is said before the model loads
        if cmd in ("list", "show"):
            from iom.service.service import TemplateService

            if cmd == "list":
                return TemplateService.subject_rows(store, args.all), EXIT_OK
            return TemplateService.describe(store, args.subject), EXIT_OK
        if cmd in ("revoke", "reissue"):
            _check_subject_before_loading(store, args)
        calibration, _ = operating_point(args, request)     # a bad --far fails before the model loads
        if not needs_model(args):
            from iom.service.pipeline import ModelFreePipeline
            from iom.service.service import TemplateService

            service = TemplateService(ModelFreePipeline(request.model), store, request.secret,
                                      calibration=calibration, witness=witness, far=args.far,
                                      threshold=args.threshold)
            if cmd == "set-admin":
                service.set_admin_credential(request.new_admin, current_secret=request.admin)
                return {"admin_credential": "set"}, EXIT_OK
            n = service.revoke(args.subject, expected_version=args.expected_version, **request.proof)
            return {"subject": args.subject, "revoked": n}, EXIT_OK
        gallery = getattr(request, "gallery", None)
        if gallery is not None and gallery.sharded:          # so does a cluster that cannot be joined
            start = time.perf_counter()
            gallery.connect()
            say(args, f"Ray cluster {gallery.cluster} joined in {time.perf_counter() - start:.1f} s; "
                      f"the gallery goes in {gallery.shard_count} shards")
        pipeline = load_pipeline(args, request)
        from iom.service.service import TemplateService

        service = TemplateService(pipeline, store, request.secret, calibration=calibration,
                                  policy=ServicePolicy(allow_embeddings=args.allow_embeddings),
                                  witness=witness, far=args.far, threshold=args.threshold, gallery_spec=gallery)
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
        if cmd == "verify" and args.batch is not None:
            return _verify_batch(args, request, service)
        if cmd == "identify" and args.batch is not None:
            return _identify_batch(args, request, service)
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


def _verify_batch(args, request, service) -> tuple[dict, int]:
    """Every ``SUBJECT<TAB>PHOTO`` line of ``--batch``: accepted, rejected, or the error of that line."""
    from arcface.errors import IomfaceError

    results = []
    with _progress(len(request.batch), "verifying", args.verbose) as bar:
        for subject, photo in request.batch:
            item = {"subject": subject, "photo": photo}
            try:
                item["accepted"] = bool(service.verify(subject, photo, request.tokens[subject]).accepted)
            except IomfaceError as e:
                item["error"] = one_line(str(e))
            results.append(item)
            bar.update(1)
    answered = [r for r in results if "error" not in r]
    summary = {"lines": len(results), "accepted": sum(r["accepted"] for r in answered),
               "rejected": sum(not r["accepted"] for r in answered), "failed": len(results) - len(answered),
               "operating_point": service.operating_point.to_dict()}
    return {"results": results, "summary": summary}, EXIT_OK if len(answered) == len(results) else EXIT_REJECTED


def _identify_batch(args, request, service) -> tuple[dict, int]:
    """Every photo of ``--batch``: its accepted candidates, or the error of that line."""
    from arcface.errors import IomfaceError

    results = []
    with _progress(len(request.batch), "identifying", args.verbose) as bar:
        for (photo,) in request.batch:
            item = {"photo": photo}
            try:
                item["candidates"] = [{"subject": c.subject_id, "rank": c.rank}
                                      for c in service.identify(photo, args.top_k)]
            except IomfaceError as e:
                item["error"] = one_line(str(e))
            results.append(item)
            bar.update(1)
    answered = [r for r in results if "error" not in r]
    summary = {"lines": len(results), "matched": sum(bool(r["candidates"]) for r in answered),
               "no_match": sum(not r["candidates"] for r in answered), "failed": len(results) - len(answered),
               "operating_point": service.identification_point()}
    return {"results": results, "summary": summary}, EXIT_OK if len(answered) == len(results) else EXIT_REJECTED


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
                    item["error"] = one_line(str(e))
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
        from iom.errors import InvalidInputError

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
        if args.command == "device-key":
            return _device_key(args, request)
        return _store_command(args, request)


def _device_key(args, request) -> tuple[dict, int]:
    """The key to provision a device with (its name is the API key's name it will use)."""
    from iom.service.template_keys import device_key_material

    return {"device": args.name, "key": device_key_material(request.secret, args.name).hex(),
            "model_id": request.model["model_id"], "m": request.model["m"], "q": request.model["q"]}, EXIT_OK
