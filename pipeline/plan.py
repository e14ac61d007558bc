"""How many actors a job starts: by default, enough to fill the machine (`boomerang doctor` prints the plan).

Every CPU actor runs one torch thread, so that an output's bytes never depend on how many actors there are
(a thread count that followed the worker count would change float reduction order); filling the machine
therefore means one actor per CPU. On CPU-only clusters the anonymize and evaluation actors together take
the CPUs Ray reports, a quarter (at least one) for evaluation, whose recognizers cost a fraction of a
diffusion pass. Where the cluster has GPUs, one anonymize actor per GPU (or per --gpus-per-worker share)
and the CPUs left over evaluate.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ActorPlan:
    anonymize: int
    evaluate: int  # evaluation actors (0: an anonymize-only job, whose one writer actor is not counted)
    gpus_per_anonymize: float
    # What each actor reserves in Ray's CPU accounting (each runs one thread whatever this says): the
    # actors together reserve at most half the cluster's CPUs, so that Ray Data's read and light tasks
    # always find room. A plan whose actors reserved more hung on 2 CPUs (a Parquet input's read task
    # never got scheduled).
    cpus_per_actor: float = 0.5

    def describe(self) -> str:
        where = f"{self.gpus_per_anonymize:g} GPU each" if self.gpus_per_anonymize else "1 CPU thread each"
        line = f"{self.anonymize} anonymize actor{'s' if self.anonymize != 1 else ''} ({where})"
        if self.evaluate:
            line += f", {self.evaluate} evaluation actor{'s' if self.evaluate != 1 else ''} (1 CPU thread each)"
        return line


def plan_actors(
    cpus: float,
    gpus: float,
    *,
    workers: int | None = None,
    eval_workers: int | None = None,
    gpus_per_worker: float | None = None,
    evaluated: bool = True,
) -> ActorPlan:
    """The actors for a cluster with `cpus` CPUs and `gpus` GPUs; explicit counts are kept as given."""
    gpu_share = gpus_per_worker if gpus_per_worker is not None else (1.0 if gpus > 0 else 0.0)
    cores = max(1, int(cpus))
    if gpu_share:
        anonymize = workers or max(1, int(gpus // gpu_share))
        # GPU actors each take a CPU to feed them; the rest evaluate.
        evaluate = eval_workers or max(1, cores - anonymize)
    elif not evaluated:
        anonymize, evaluate = workers or cores, 0
    elif workers and not eval_workers:
        anonymize, evaluate = workers, max(1, cores - workers)
    else:
        evaluate = eval_workers or max(1, cores // 4)
        anonymize = workers or max(1, cores - evaluate)
    evaluate = evaluate if evaluated else 0
    actors = anonymize + max(evaluate, 1)  # an anonymize-only job has one writer actor
    return ActorPlan(anonymize, evaluate, float(gpu_share), min(0.5, cpus / 2 / actors))
