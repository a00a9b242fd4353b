"""iomface demo: protected face templates end to end.

    python run_me.py [--images A B ...] [--db FILE]
    python run_me.py --samples DIR          # write the three demo photos, for the README's commands

Builds the pipeline the project ships (MTCNN alignment, the default stage-1 model
``models/mobilefacenet_ms1m``, the deep IoM hasher ``models/iom_mobilefacenet_ms1m_512x8`` and its
calibrated threshold), enrolls two people in a template database (a temporary SQLite file
unless ``--db``), prints code excerpts, genuine and impostor Hamming distances, identifies,
then revokes a template, reissues it under a new token and shows the old template no longer
matching. Nothing is downloaded and nothing is read from ``../shared``: with no arguments the
photos are two public-domain portraits that installed packages ship, Grace Hopper
(matplotlib's ``grace_hopper.jpg``) and the astronaut Eileen Collins (scikit-image's
``astronaut.png``, a NASA photo). Only one photo of each exists there, so the genuine probe is
an *augmented copy of the same photo*; the output says so. ``--images A B ...`` uses your own
photos: A is enrolled, every other photo is verified against it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from iom.defaults import DEFAULT_HASHER as HASHER  # noqa: E402


def astronaut_path() -> str:
    """scikit-image's ``astronaut.png`` (read as a file: importing skimage is not needed)."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        from arcface.errors import ConfigError
        raise ConfigError("scikit-image is not installed (pip install -r requirements.txt): it ships "
                          "the second demo portrait")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "astronaut.png")


def demo_photos():
    """(label, RGB photo) of the two demo people; the second entry is an augmented copy."""
    import cv2
    import matplotlib.cbook as cbook
    import numpy as np

    from arcface.data.images import decode_image

    photo = decode_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    rng = np.random.default_rng(0)
    h, w = photo.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), 6, 1.0)              # rotate 6°, brighten, noise
    copy = cv2.warpAffine(photo, turn, (w, h), borderMode=cv2.BORDER_REFLECT).astype(np.float32)
    copy = np.clip(copy[:, ::-1] * 1.1 + 8 + rng.normal(0, 4, copy.shape), 0, 255).astype(np.uint8)
    other = decode_image(astronaut_path())
    return (("grace_hopper.jpg (matplotlib)", photo),
            ("grace_hopper.jpg mirrored, rotated 6°, brightened, with noise (an AUGMENTED COPY of the "
             "same photo, standing in for a second photo of her)", copy),
            ("astronaut.png (scikit-image; Eileen Collins, NASA, public domain): another person", other))


#: the files ``--samples DIR`` writes, in the order of :func:`demo_photos`
SAMPLE_FILES = ("hopper.jpg", "hopper_copy.jpg", "collins.png")


def write_samples(folder: str) -> list[str]:
    """Write the demo's three photos into ``folder`` (created; existing files are kept):
    ``hopper.jpg`` (Grace Hopper), ``hopper_copy.jpg`` (an augmented copy of that photo: the
    only other "photo" of her there is) and ``collins.png`` (Eileen Collins). Their paths."""
    from arcface.data.images import encode_jpeg, encode_png

    os.makedirs(folder, exist_ok=True)
    out = []
    for name, (_, photo) in zip(SAMPLE_FILES, demo_photos()):
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(encode_png(photo) if name.endswith(".png") else encode_jpeg(photo))
        out.append(path)
    return out


def excerpt(code, n=16) -> str:
    return " ".join(str(int(s)) for s in code[:n]) + " …"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", nargs="+", default=None, help="your photos: the first is enrolled")
    parser.add_argument("--db", default=None, help="SQLite file (default: a temporary one)")
    parser.add_argument("--samples", default=None, metavar="DIR",
                        help="write the demo's photos to DIR (for the README's commands) and stop")
    args = parser.parse_args(argv)
    if args.samples is not None:
        for path in write_samples(args.samples):
            print(path)
        return 0

    import numpy as np

    from iom.search.packing import from_bytes, unpack_codes
    from iom.service.pipeline import Pipeline
    from iom.service.policy import ServicePolicy
    from iom.service.service import TemplateService
    from iom.store.sqlite import SQLiteStore

    pipeline = Pipeline.from_pretrained(HASHER)
    m, q = pipeline.hasher.m, pipeline.hasher.q
    tmp = tempfile.TemporaryDirectory()
    store = SQLiteStore(args.db or os.path.join(tmp.name, "templates.db"))
    # the demo prints Hamming distances, so it runs the research policy that exposes scores;
    # a deployed service keeps the default, which answers with decisions only
    service = TemplateService(pipeline, store, app_secret=os.urandom(32), policy=ServicePolicy(expose_scores=True))
    print(f"pipeline: MTCNN → {pipeline.hasher.spec['stage1_model']} → IoM hasher {HASHER} (m={m}, q={q}); "
          f"decision threshold {service.threshold:.4f} (calibrated at FAR {service.calibration['far']:g} on "
          f"{service.calibration.get('dataset', 'identities held out of training')})")

    def code_of(subject):
        record = store.active(subject)["verify"]
        return unpack_codes(from_bytes(record.code, m, q)[None], m, q)[0]

    def distance(similarity):
        return round((1.0 - similarity) * m)

    if args.images:
        enrolled, *probes = args.images
        service.enroll("A", [enrolled], user_token="token-A")
        print(f"\nenrolled {enrolled} as A; stored code {excerpt(code_of('A'))}")
        for path in probes:
            d = service.verify("A", path, "token-A")
            print(f"  {path}: Hamming distance {distance(d.similarity)}/{m}, similarity {d.similarity:.4f}, "
                  f"{'ACCEPTED' if d.accepted else 'rejected'}")
        return 0

    (name_a, photo_a), (name_copy, copy), (name_other, other) = demo_photos()
    print(f"\n[1] {name_a}\n[2] {name_copy}\n[3] {name_other}")
    service.enroll("grace", [photo_a], user_token="grace-token-1")
    service.enroll("eileen", [other], user_token="eileen-token")
    old_code = code_of("grace")
    print(f"\nenrolled [1] as 'grace' (token 'grace-token-1') and [3] as 'eileen' (token 'eileen-token')")
    print(f"stored for grace: salt, key version, model id and the keyed code {excerpt(old_code)} "
          f"({len(store.active('grace')['verify'].code)} bytes packed); no photo, embedding or token")
    genuine = service.verify("grace", copy, "grace-token-1")
    impostor = service.verify("grace", other, "grace-token-1")
    wrong = service.verify("grace", copy, "not-her-token")
    print(f"\ngenuine  [2] vs grace: Hamming distance {distance(genuine.similarity):3d}/{m}  "
          f"→ {'ACCEPTED' if genuine.accepted else 'rejected'}   (an augmented copy of the same photo)")
    print(f"impostor [3] vs grace: Hamming distance {distance(impostor.similarity):3d}/{m}  "
          f"→ {'ACCEPTED' if impostor.accepted else 'rejected'}   (another person, with grace's token)")
    print(f"[2] with a wrong token: Hamming distance {distance(wrong.similarity):3d}/{m}  "
          f"→ {'ACCEPTED' if wrong.accepted else 'rejected'}   (chance is {m - m // q})")
    top = service.identify(copy, top_k=2)
    print("identify [2]: " + ", ".join(f"{c.subject_id} ({c.similarity:.3f}{', match' if c.accepted else ''})"
                                       for c in top))

    # reissue needs proof: grace's current token with her face (or the administrator credential)
    service.reissue("grace", [photo_a], new_token="grace-token-2", user_token="grace-token-1", proof_photo=copy)
    new_code = code_of("grace")
    same = int(np.count_nonzero(old_code == new_code))
    print(f"\nrevoked grace's template and reissued it from the same photo under 'grace-token-2' "
          f"(proved with her current token and face):")
    print(f"  old code {excerpt(old_code)}\n  new code {excerpt(new_code)}")
    print(f"  old vs new template: Hamming distance {m - same}/{m} (unrelated codes differ in about "
          f"{m - m // q}); the old one is marked revoked and never matches")
    renewed = service.verify("grace", copy, "grace-token-2")
    stale = service.verify("grace", copy, "grace-token-1")
    print(f"  [2] with the new token: distance {distance(renewed.similarity)}/{m} → "
          f"{'ACCEPTED' if renewed.accepted else 'rejected'}; with the old token: distance "
          f"{distance(stale.similarity)}/{m} → {'ACCEPTED' if stale.accepted else 'rejected'}")
    store.close()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from arcface.cli import fail_cleanly

    sys.exit(fail_cleanly(main))
