"""``iomface``: the template service from the command line.

    iomface enroll   SUBJECT PHOTO [PHOTO ...] --token T      enroll (several photos are fused)
    iomface verify   SUBJECT PHOTO --token T                  similarity and decision
    iomface identify PHOTO [--top_k 5]                        closest enrolled subjects
    iomface revoke   SUBJECT                                  revoke every active template
    iomface reissue  SUBJECT PHOTO [PHOTO ...] --token NEW    revoke and enroll under a new token
    iomface list     [--all]                                  enrolled subjects
    iomface show     SUBJECT                                  template metadata (no codes)

Common options: ``--db`` (a SQLite file, default ``iomface.db``, or ``postgresql://…``),
``--model`` (a shipped hasher, default ``iom_mobilefacenet_ms1m_512x8``), ``--aligned`` (photos are
already aligned 112x112 crops: skip MTCNN), ``--embeddings FILE.npz`` (use its rows instead
of photos). The application secret comes from the environment variable ``IOMFACE_APP_SECRET``
or ``--secret_file``; it is never stored. Errors print one ``error:`` line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from iom.defaults import DEFAULT_HASHER  # noqa: E402

COMMANDS = ("enroll", "verify", "identify", "revoke", "reissue", "list", "show")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iomface", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="iomface.db", help="SQLite file or postgresql:// URL")
    parser.add_argument("--model", default=DEFAULT_HASHER, help="shipped hasher name (models/)")
    parser.add_argument("--secret_file", default=None, help="file holding the application secret")
    parser.add_argument("--aligned", action="store_true", help="photos are aligned crops (no MTCNN)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("enroll", "reissue"):
        p = sub.add_parser(name)
        p.add_argument("subject")
        p.add_argument("photos", nargs="*")
        p.add_argument("--token", required=True)
        p.add_argument("--embeddings", default=None, help=".npz whose 'embeddings' rows are the samples")
    p = sub.add_parser("verify")
    p.add_argument("subject")
    p.add_argument("photo", nargs="?")
    p.add_argument("--token", required=True)
    p.add_argument("--embeddings", default=None, help=".npz whose first row is the probe")
    p = sub.add_parser("identify")
    p.add_argument("photo", nargs="?")
    p.add_argument("--top_k", type=int, default=5)
    p.add_argument("--embeddings", default=None, help=".npz whose first row is the probe")
    p = sub.add_parser("revoke")
    p.add_argument("subject")
    p = sub.add_parser("list")
    p.add_argument("--all", action="store_true", help="include revoked subjects")
    p = sub.add_parser("show")
    p.add_argument("subject")
    return parser


def _secret(args) -> bytes:
    from iom.service.errors import InvalidInputError

    if args.secret_file:
        try:
            with open(args.secret_file, "rb") as f:
                secret = f.read().strip()
        except OSError as e:
            raise InvalidInputError(f"--secret_file: {e}") from None
    else:
        secret = os.environ.get("IOMFACE_APP_SECRET", "").encode()
    if not secret:
        raise InvalidInputError("no application secret: set IOMFACE_APP_SECRET or pass --secret_file")
    return secret


def _embeddings(path):
    if path is None:
        return None
    from arcface.embeddings_io import load_embeddings

    return load_embeddings(path).embeddings


def run(args) -> object:
    from iom.service.store import open_store

    store = open_store(args.db)
    try:
        if args.command == "list":
            return store.subjects(include_revoked=args.all)
        if args.command == "revoke":
            return {"subject": args.subject, "revoked": store.revoke(args.subject)}
        if args.command == "show":
            from iom.service.service import TemplateService
            return TemplateService.describe(store, args.subject)
        from iom.service.pipeline import Pipeline
        from iom.service.service import TemplateService

        service = TemplateService(Pipeline.from_pretrained(args.model, align=not args.aligned), store,
                                  _secret(args))
        emb = _embeddings(getattr(args, "embeddings", None))
        if args.command in ("enroll", "reissue"):
            photos = args.photos or None
            if emb is None and photos is None:
                from iom.service.errors import InvalidInputError
                raise InvalidInputError(f"{args.command}: give photos or --embeddings")
            if args.command == "enroll":
                ids = service.enroll(args.subject, photos, emb, user_token=args.token)
            else:
                ids = service.reissue(args.subject, photos, args.token, embeddings=emb)
            return {"subject": args.subject, "templates": ids}
        if args.command == "verify":
            d = service.verify(args.subject, args.photo, args.token, embedding=None if emb is None else emb[:1])
            return {"subject": args.subject, "similarity": round(d.similarity, 4), "accepted": d.accepted,
                    "threshold": d.threshold}
        hits = service.identify(args.photo, args.top_k, embedding=None if emb is None else emb[:1])
        return [{"subject": s, "similarity": round(v, 4), "accepted": a} for s, v, a in hits]
    finally:
        store.close()


def main(argv=None) -> int:
    from arcface.errors import IomfaceError

    args = _parser().parse_args(argv)
    try:
        result = run(args)
    except (IomfaceError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
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
