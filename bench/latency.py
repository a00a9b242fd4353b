#!/usr/bin/env python
"""Latency of one photo → protected templates, and of one verification, per stage, on this CPU.

The pipeline is the one users get: :meth:`iom.service.pipeline.Pipeline.from_pretrained`
(``--hasher``, default: that method's default) inside a
:class:`~iom.service.service.TemplateService` (default :class:`~iom.service.policy.ServicePolicy`)
over a temporary SQLite store. Each photo of ``--photos`` (default: the 40 LFW photos of
``../shared/data/raw/lfw``, 20 people x 2, 250x250 JPEG) is given as its encoded bytes, as a
client sends it, and goes through the exact calls ``TemplateService.enroll`` makes, timed one
by one (``time.perf_counter``):

=========  =============================================================================
stage      calls
=========  =============================================================================
decode     ``arcface.align.to_rgb`` (JPEG → RGB uint8; ``FaceAligner.align_batch``'s first step)
detect     ``FaceAligner._detect`` (MTCNN: image pyramid, PNet, RNet, ONet)
align      ``FaceAligner._faces`` (face choice + five-point similarity warp to 112x112)
embed      ``Embedder.embed_arrays`` on the crop + ``Pipeline.fused_embedding`` (normalise)
key        ``template_keys.verification_key``: scrypt(token, fresh salt, n=policy.scrypt_n,
           r=8, p=1), then HKDF with the secret, bound to subject / "verify" / key version /
           model (``binding_context``)
hash       ``DeepIoMHasher.encode`` under that key (hashing network + the key's code relabelling)
pack       ``pack_codes`` + ``to_bytes`` (the stored verification blob)
id-hash    ``DeepIoMHasher.encode`` under ``gallery_key(secret)`` (the code in the secret gallery
           space; the gallery key itself is derived once, when the service is built)
id-key     ``template_keys.identification_key`` (HKDF, fresh salt, bound to subject /
           "identify" / key version / model) + ``CodeKeying(...).apply`` (per-template relabelling)
id-pack    ``pack_codes`` + ``to_bytes`` (the stored identification blob)
=========  =============================================================================

(The service derives the identification key before it hashes into the gallery space; the
order does not change the work.) With ``TemplateService(identification=False)`` the three
``id-`` stages are not done; ``--no_identification`` times that service.

``verification_template`` is the wall time from decode to pack (photo → one protected
template: what ``verify`` computes before its store read); ``end_to_end`` the whole chain
(photo → both templates: what ``enroll`` computes before its write). Each is one call's wall
time, not a sum of per-stage medians. The API is timed too, whole: ``enroll``
(``TemplateService.enroll`` from one photo: token-strength check, both templates, the
HMAC-authenticated SQLite rows and the HMAC-chained event-log entry) and ``verify``
(``TemplateService.verify`` of the person's other photo against its template: photo →
decision, scrypt included, failure counting read); ``verify_embedding`` is ``verify`` from a
ready embedding (store read, key, hash, compare) on a second service over the same store with
``ServicePolicy(allow_embeddings=True, expose_scores=True)`` (the default policy refuses raw
embeddings and returns no similarity), and ``match`` only the comparison of the stored blob
with the probe code (``from_bytes`` + ``count_mismatches``).

Checks against the real API (once, after the warm-up): the staged embedding equals
``Pipeline.fused_embedding(photos=...)``; a subject enrolled through ``TemplateService.enroll``
has exactly the blobs the staged chain gives with the stored rows' salts (verification and
identification) and the service's key version; and in the verify pass the similarity the
staged match computes equals the one the scoring service returns, for every probe.

Warm-up: ``--warmup`` photos (default 3) go through the chain and the API calls first,
untimed (they build the detector, trace the compiled functions and fill caches); the very
first call's time is reported apart (``first_call_ms``) and excluded from every figure.
Then the chain runs ``--repeats`` times over all photos; p50/p95 are over all those calls.
The machine is shared: the load average is printed with each pass and kept in the JSON.

``--threads N`` sizes TensorFlow's thread pools (MTCNN always runs on TensorFlow; so does the
embedder under ``KERAS_BACKEND=tensorflow``) and OMP/MKL; under JAX the XLA CPU client keeps
its own. ``--scrypt_n N`` sets the policy's scrypt cost (default: ``ServicePolicy``'s, 2^14).
``--profile PATH`` writes cProfile statistics of one extra pass over the photos and prints the
top functions by cumulative time.

Printed: the machine, one line per stage (p50/p95/mean ms), the API figures, and as the LAST
stdout line one JSON object::

    {"end_to_end": {"p50_ms": ..., "p95_ms": ...}, "verification_template": {...},
     "stages": {"decode": {...}, ...}, "verify": {...}, "enroll": {...}, "scrypt_n": 16384,
     "key_version": 214, "machine": ..., "date": ..., "backend": ..., "model": ...,
     "n_photos": 40, ...}

Usage::

    python bench/latency.py                       # shipped default model, 3 repeats
    python bench/latency.py --repeats 5 --threads 2 --json outputs/latency.json
    KERAS_BACKEND=jax python bench/latency.py --hasher iom_mbfn_celeba299_64x8
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (RAW_LFW, add_json_option, arg_parser, call_ms, cpu_model, distribution,  # noqa: E402
                          emit, loadavg, machine_line, photo_files, quiet_tensorflow, say, set_threads,
                          strong_token, utc_now)
from iom.defaults import DEFAULT_HASHER  # noqa: E402

VERIFY_STAGES = ("decode", "detect", "align", "embed", "key", "hash", "pack")
ID_STAGES = ("id-hash", "id-key", "id-pack")
STAGES = VERIFY_STAGES + ID_STAGES
SECRET = b"latency-bench-application-secret"


def new_token() -> bytes:
    """A strong random user token (the policy refuses weak ones at enroll)."""
    return strong_token().encode()


def summary(ms: list[float]) -> dict:
    """p50 / p95 / mean / min / max of a list of milliseconds (rounded to 0.01 ms)."""
    return distribution(ms, ("p50", "p95", "mean", "min", "max", "n"), digits=2, suffix="_ms")


def pipeline_options(args) -> dict:
    """The keyword arguments of ``Pipeline.from_pretrained`` that the command line sets (the one
    place to add more)."""
    return {"runtime": args.runtime}


class Bench:
    """The pipeline and services under test, and the staged chain."""

    def __init__(self, hasher_name: str | None, store_path: str, scrypt_n: int | None = None,
                 identification: bool = True, pipeline=None, pipeline_options: dict | None = None):
        from iom.service.pipeline import Pipeline
        from iom.service.policy import ServicePolicy
        from iom.service.service import TemplateService
        from iom.store.sqlite import SQLiteStore
        from iom.service.template_keys import gallery_key

        start = time.perf_counter()
        self.pipeline = pipeline or Pipeline.from_pretrained(hasher_name or DEFAULT_HASHER, **(pipeline_options or {}))
        self.load_s = time.perf_counter() - start
        self.store = SQLiteStore(store_path)
        cost = {} if scrypt_n is None else {"scrypt_n": scrypt_n}
        # the service users get (default policy: photos only, decisions only) ...
        self.policy = ServicePolicy(**cost)
        self.service = TemplateService(self.pipeline, self.store, SECRET, identification=identification,
                                       policy=self.policy)
        # ... and a trusted back end's over the same store, for verify from an embedding
        self.trusted = TemplateService(self.pipeline, self.store, SECRET, identification=identification,
                                       policy=ServicePolicy(allow_embeddings=True, expose_scores=True, **cost))
        self.identification = identification
        self.key_version = self.service.key_version
        self.gallery_key = gallery_key(SECRET)   # the service derives it once, at construction
        self.aligner, self.embedder, self.hasher = self.pipeline.aligner, self.pipeline.embedder, self.pipeline.hasher
        if self.aligner is None:
            raise SystemExit("the pipeline has no aligner: nothing to time from photos")

    def context(self, subject: str, purpose: str, key_version: int | None = None) -> bytes:
        from iom.service.template_keys import binding_context

        return binding_context(subject, purpose, self.key_version if key_version is None else key_version,
                               self.pipeline.model_id)

    def template(self, photo: bytes, token: bytes, subject: str = "latency-subject",
                 salts: tuple[bytes, bytes] | None = None) -> tuple[dict, np.ndarray, dict]:
        """One photo → packed templates ({"verify": blob, "identify": blob}), the same calls as
        ``TemplateService.enroll``; times in ms. ``salts`` (verify, identify): fresh ones if ``None``."""
        from arcface.align import to_rgb
        from iom.hashing.keying import CodeKeying
        from iom.search.packing import pack_codes, to_bytes
        from iom.service.service import SALT_BYTES
        from iom.service.template_keys import identification_key, scrypt_cost, verification_key

        verify_salt, identify_salt = salts or (None, None)
        cost = scrypt_cost(self.key_version)
        t = [time.perf_counter()]
        rgb = to_rgb(photo)
        self.aligner._check_image_size(rgb, "<bytes>")
        t.append(time.perf_counter())
        rows = self.aligner._detect({0: rgb})[0]
        t.append(time.perf_counter())
        crop = self.aligner._faces(rgb, rows, "<bytes>")[0].image
        t.append(time.perf_counter())
        embedding, _ = self.pipeline.fused_embedding(embeddings=self.embedder.embed_arrays(crop[None]))
        t.append(time.perf_counter())
        salt = verify_salt or os.urandom(SALT_BYTES)
        key = verification_key(token, SECRET, salt, self.context(subject, "verify"), cost)
        t.append(time.perf_counter())
        code = self.hasher.encode(embedding, key)
        t.append(time.perf_counter())
        blobs = {"verify": to_bytes(pack_codes(code, self.hasher.q)[0])}
        t.append(time.perf_counter())
        if self.identification:
            gallery_code = self.hasher.encode(embedding, self.gallery_key)
            t.append(time.perf_counter())
            salt = identify_salt or os.urandom(SALT_BYTES)
            keying = CodeKeying(identification_key(SECRET, salt, self.context(subject, "identify")),
                                self.hasher.m, self.hasher.q)
            relabelled = keying.apply(gallery_code)
            t.append(time.perf_counter())
            blobs["identify"] = to_bytes(pack_codes(relabelled, self.hasher.q)[0])
            t.append(time.perf_counter())
        ms = {name: 1e3 * (b - a) for name, a, b in zip(STAGES, t, t[1:])}
        ms["verification_template"] = 1e3 * (t[len(VERIFY_STAGES)] - t[0])
        ms["end_to_end"] = 1e3 * (t[-1] - t[0])
        return blobs, embedding, ms

    def check_against_api(self, photo: bytes) -> None:
        """The staged chain is the service's own path: same embedding as the pipeline's, and
        the same stored blobs as ``enroll`` for the same salts, token and subject."""
        _, staged, _ = self.template(photo, new_token())
        api, _ = self.pipeline.fused_embedding(photos=[photo])
        np.testing.assert_allclose(staged, api, atol=1e-6)
        token, subject = new_token(), "latency-check"
        self.service.enroll(subject, photos=[photo], user_token=token)
        records = self.store.active(subject)
        assert sorted(records) == (["identify", "verify"] if self.identification else ["verify"]), sorted(records)
        salts = (records["verify"].salt, records["identify"].salt if self.identification else None)
        blobs, _, _ = self.template(photo, token, subject, salts)
        for purpose, record in records.items():
            assert record.key_version == self.key_version, (record.key_version, self.key_version)
            assert record.code == blobs[purpose], f"the staged {purpose} template differs from enroll's"

    def match(self, subject: str, token: bytes, embedding: np.ndarray) -> tuple[float, float]:
        """(similarity, ms of from_bytes + count_mismatches) of a probe embedding against ``subject``."""
        from iom.search.packing import count_mismatches, from_bytes, pack_codes
        from iom.service.template_keys import scrypt_cost, verification_key

        record = self.store.active(subject)["verify"]
        key = verification_key(token, SECRET, record.salt, self.context(subject, "verify", record.key_version),
                               scrypt_cost(record.key_version))
        probe = pack_codes(self.hasher.encode(embedding, key), self.hasher.q)[0]
        start = time.perf_counter()
        stored = from_bytes(record.code, self.hasher.m, self.hasher.q)
        mismatches = int(count_mismatches(stored, probe))
        ms = 1e3 * (time.perf_counter() - start)
        return 1.0 - mismatches / self.hasher.m, ms


def model_facts(bench: Bench, hasher_name: str | None) -> dict:
    spec = bench.hasher.spec
    backbone = getattr(bench.embedder, "backbone", None)         # the Keras runtime's network
    choice = bench.pipeline.runtime
    return {"hasher": hasher_name or DEFAULT_HASHER, "hasher_is_default": hasher_name in (None, DEFAULT_HASHER),
            "model": spec.get("stage1_model"),
            "model_params": int(backbone.count_params()) if backbone is not None else None,
            "runtime": choice.runtime if choice else "keras", "runtime_reason": choice.reason if choice else None,
            "embedding_dim": int(bench.hasher.dim), "m": bench.hasher.m, "q": bench.hasher.q,
            "model_id": bench.pipeline.model_id, "embedder_batch_size": bench.embedder.batch_size,
            "scrypt_n": bench.policy.scrypt_n, "key_version": bench.key_version,
            "identification": bench.identification}


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--hasher", default=None, help="models/<NAME> (default: Pipeline.from_pretrained's)")
    parser.add_argument("--photos", default=RAW_LFW, help="folder of photos (searched recursively)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the photos")
    parser.add_argument("--warmup", type=int, default=3, help="untimed photos first")
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow / OMP threads (default: theirs)")
    parser.add_argument("--runtime", choices=("auto", "keras", "tflite"), default="auto",
                        help="what embeds the faces (Pipeline.from_pretrained's runtime; default auto)")
    parser.add_argument("--scrypt_n", type=int, default=None,
                        help="the policy's scrypt cost, a power of two (default: ServicePolicy's, 2^14)")
    parser.add_argument("--no_identification", action="store_true",
                        help="time a service that keeps no identification templates")
    parser.add_argument("--profile", default=None, help="write cProfile stats of one extra pass here")
    add_json_option(parser, "also write the JSON summary here")
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 1:
        parser.error("--repeats and --warmup must be >= 1")

    quiet_tensorflow()
    set_threads(args.threads)
    import keras

    paths = photo_files(args.photos)
    if not paths:
        raise SystemExit(f"no photos under {args.photos}")
    photos = [open(p, "rb").read() for p in paths]
    person = [os.path.basename(os.path.dirname(p)) for p in paths]
    tokens = [new_token() for _ in photos]
    loads = {"start": loadavg()}
    say(f"machine: {machine_line()}, keras {keras.__version__} on {keras.backend.backend()}, "
        f"threads {args.threads or 'default'}, load average {loads['start']}")

    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(args.hasher, os.path.join(tmp, "templates.db"), args.scrypt_n, not args.no_identification,
                      pipeline_options=pipeline_options(args))
        facts = model_facts(bench, args.hasher)
        stages = STAGES if bench.identification else VERIFY_STAGES
        params = f"{facts['model_params']:,} params" if facts["model_params"] else f"runtime {facts['runtime']}"
        print(f"pipeline: {facts['hasher']} (stage 1 {facts['model']}, {params}, "
              f"{facts['embedding_dim']}-d; m={facts['m']} q={facts['q']}), loaded in {bench.load_s:.1f} s; "
              f"scrypt n=2^{facts['scrypt_n'].bit_length() - 1} (key version {facts['key_version']}); "
              f"{'verification + identification' if bench.identification else 'verification'} templates; "
              f"{len(photos)} photos of {len(set(person))} people from {os.path.abspath(args.photos)}",
              flush=True)

        # warm-up (untimed); the first call's time is kept apart
        _, _, first = bench.template(photos[0], new_token())
        for k, photo in enumerate(photos[:args.warmup]):
            token = new_token()
            bench.template(photo, token)
            bench.service.enroll(f"warm-up-{k}", photos=[photo], user_token=token)
            bench.service.verify(f"warm-up-{k}", probe=photo, user_token=token)
            bench.trusted.verify(f"warm-up-{k}", embedding=bench.pipeline.embed_photos(photo), user_token=token)
        # the staged chain is the service's own path
        bench.check_against_api(photos[0])
        loads["after_warmup"] = loadavg()

        times: dict[str, list[float]] = {name: [] for name in (*stages, "verification_template", "end_to_end")}
        loads["passes"] = []
        embeddings = {}
        for r in range(args.repeats):
            for i, photo in enumerate(photos):
                _, embeddings[i], ms = bench.template(photo, tokens[i], f"s{i}")
                for name, value in ms.items():
                    times[name].append(value)
            loads["passes"].append(loadavg())
            e2e = summary(times["end_to_end"][-len(photos):])
            print(f"pass {r + 1}/{args.repeats}: end to end p50 {e2e['p50_ms']:.1f} ms, p95 {e2e['p95_ms']:.1f} ms; "
                  f"load average {loads['passes'][-1]}", flush=True)

        # the API, whole: enroll every photo, then verify each against its person's other photo
        api_ms: dict[str, list[float]] = {"enroll": [], "verify": [], "verify_embedding": [], "match": []}
        for i, photo in enumerate(photos):
            _, ms = call_ms(bench.service.enroll, f"s{i}", photos=[photo], user_token=tokens[i])
            api_ms["enroll"].append(ms)
        genuine, accepted = 0, 0
        for i, photo in enumerate(photos):
            others = [j for j in range(len(photos)) if j != i and person[j] == person[i]]
            if not others:
                continue
            j = others[0]
            decision, ms = call_ms(bench.service.verify, f"s{j}", probe=photo, user_token=tokens[j])
            api_ms["verify"].append(ms)
            assert decision.similarity is None and decision.threshold is None, decision  # the default policy
            scored, ms = call_ms(bench.trusted.verify, f"s{j}", embedding=embeddings[i], user_token=tokens[j])
            api_ms["verify_embedding"].append(ms)
            similarity, ms = bench.match(f"s{j}", tokens[j], embeddings[i])
            api_ms["match"].append(ms)
            assert abs(similarity - scored.similarity) < 1e-9, (similarity, scored.similarity)
            assert scored.accepted == (similarity >= bench.service.threshold)
            genuine += 1
            accepted += int(decision.accepted)
        loads["end"] = loadavg()

        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
            for i, photo in enumerate(photos):
                bench.template(photo, tokens[i], f"s{i}")
            profiler.disable()
            profiler.dump_stats(args.profile)
            print(f"cProfile of one pass over {len(photos)} photos (written to {args.profile}):")
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        bench.store.close()

    print(f"{'stage':22s} {'p50 ms':>8s} {'p95 ms':>8s} {'mean ms':>8s}   ({args.repeats} x {len(photos)} photos, "
          f"warm-up excluded; first call {first['end_to_end']:.0f} ms)")
    for name in (*stages, "verification_template", "end_to_end"):
        s = summary(times[name])
        print(f"{name:22s} {s['p50_ms']:8.2f} {s['p95_ms']:8.2f} {s['mean_ms']:8.2f}")
    verify = {name: summary(api_ms[name]) for name in ("verify", "verify_embedding", "match")}
    verify.update(genuine_pairs=genuine, genuine_accepted=accepted, threshold=bench.service.threshold)
    enroll = summary(api_ms["enroll"])
    for name, s in (("api enroll", enroll), ("api verify", verify["verify"]),
                    ("verify (embedding)", verify["verify_embedding"]), ("match", verify["match"])):
        print(f"{name:22s} {s['p50_ms']:8.2f} {s['p95_ms']:8.2f} {s['mean_ms']:8.2f}")
    print(f"genuine verifications accepted: {accepted}/{genuine}; load average at the end {loads['end']}")
    record = {
        "end_to_end": summary(times["end_to_end"]),
        "verification_template": summary(times["verification_template"]),
        "stages": {name: summary(times[name]) for name in stages}, "verify": verify, "enroll": enroll,
        "first_call_ms": {k: round(v, 1) for k, v in first.items()},
        "machine": cpu_model(), "cpu_count": os.cpu_count(), "threads": args.threads,
        "date": utc_now(),
        "backend": keras.backend.backend(), "keras": keras.__version__, **facts,
        "n_photos": len(photos), "n_people": len(set(person)), "repeats": args.repeats, "warmup": args.warmup,
        "load_s": round(bench.load_s, 2), "loadavg": loads,
    }
    emit(record, args.json)


if __name__ == "__main__":
    main()
