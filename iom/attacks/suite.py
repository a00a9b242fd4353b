"""Running the attacks: every (hasher, target kind, seed), each attack on fresh targets,
in this process or spread over worker processes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from iom.attacks import boundary_walk, forgery, full_key, oracle, relabel, tokens
from iom.attacks.faces import Faces
from iom.attacks.setting import Scale, Setting

#: the attacks, in the issue's order
ATTACKS: dict[str, Callable[[Setting], dict]] = {
    "score_oracle": oracle.run,
    "relabelling": relabel.run,
    "row_forgery": forgery.run,
    "tokens": tokens.run,
    "full_key": full_key.run,
    "boundary_walk": boundary_walk.run,
}
KINDS = ("before", "after")

_WORKER: dict = {}


def _run_one(hasher, calibration, faces, kind, seed, attack, scale, workdir, options) -> dict:
    setting = Setting(kind, hasher, calibration, faces, int(seed), scale, Path(workdir), dict(options))
    setting.workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = ATTACKS[attack](setting)
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def _init_worker(names, calibrations, faces, dim) -> None:
    from iom.attacks.hashers import build_hasher

    _WORKER.update(faces=faces, hashers={n: (build_hasher(n, dim), c) for n, c in zip(names, calibrations)})


def _task(name, kind, seed, attack, scale, workdir, options) -> dict:
    hasher, calibration = _WORKER["hashers"][name]
    return _run_one(hasher, calibration, _WORKER["faces"], kind, seed, attack, scale, workdir, options)


def run_suite(hashers: dict[str, tuple[object, dict]], faces: Faces, seeds, scale: Scale, workdir,
              kinds=KINDS, attacks=None, target_options: dict | None = None, jobs: int = 1,
              log: Callable[[str], None] = print) -> dict:
    """``{hasher name: {kind: {attack: [result of each seed]}}}`` (each with its ``seconds``).

    ``hashers``: name -> (hasher, calibration); ``target_options``: kind -> options of its
    targets (e.g. a cheaper scrypt policy for tests); ``jobs`` > 1: that many worker
    processes, which rebuild the hashers by name (:func:`iom.attacks.hashers.build_hasher`)."""
    tasks = [(name, kind, int(seed), attack) for name in hashers for kind in kinds for seed in seeds
             for attack in (attacks or ATTACKS)]
    options = {kind: (target_options or {}).get(kind, {}) for kind in kinds}
    out: dict = {}

    def record(task, result):
        name, kind, seed, attack = task
        out.setdefault(name, {}).setdefault(kind, {}).setdefault(attack, {})[seed] = result
        log(f"{name} {kind} seed {seed} {attack}: {result['seconds']:.1f} s")

    if jobs <= 1:
        for task in tasks:
            name, kind, seed, attack = task
            hasher, calibration = hashers[name]
            record(task, _run_one(hasher, calibration, faces, kind, seed, attack, scale,
                                  Path(workdir) / name.replace(":", "_"), options[kind]))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        names = list(hashers)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                                 initargs=(names, [hashers[n][1] for n in names], faces, faces.dim)) as pool:
            futures = {pool.submit(_task, *task, scale, Path(workdir) / task[0].replace(":", "_"),
                                   options[task[1]]): task for task in tasks}
            for future, task in futures.items():
                record(task, future.result())
    return {name: {kind: {attack: [by_seed[s] for s in sorted(by_seed)] for attack, by_seed in by_attack.items()}
                   for kind, by_attack in by_kind.items()} for name, by_kind in out.items()}
