"""How many actors a job starts: by default, enough to fill the machine (`boomerang doctor` prints the plan).

Every CPU actor runs one torch thread, so that an output's bytes never depend on how many actors there are
(a thread count that followed the worker count would change float reduction order); filling the machine
therefore means one actor per CPU. On CPU-only clusters the anonymize and evaluation actors together take
the CPUs Ray reports, a quarter (at least one) for evaluation, whose recognizers cost a fraction of a
diffusion pass. Where the cluster has GPUs, one anonymize actor per GPU and one evaluation actor per GPU next
to it, sharing it (0.75 and 0.25 of each GPU: deepface's PyTorch recognizers are small and run on the GPU
Ray gives their actor); with an explicit --gpus-per-worker share, as many anonymize actors as fit and the
CPUs left over evaluate, unless --eval-gpus-per-worker gives the evaluation a share too.
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
    gpus_per_evaluate: float = 0.0

    def describe(self) -> str:
        line = (
            f"{self.anonymize} anonymize actor{'s' if self.anonymize != 1 else ''} ({_where(self.gpus_per_anonymize)})"
        )
        if self.evaluate:
            line += f", {self.evaluate} evaluation actor{'s' if self.evaluate != 1 else ''} "
            line += f"({_where(self.gpus_per_evaluate)})"
        return line


# What an evaluation actor takes of a GPU by default where the cluster has GPUs; the anonymize actor on the
# same GPU takes the rest.
EVAL_GPU_SHARE = 0.25


def _where(gpus: float) -> str:
    return f"{gpus:g} GPU each" if gpus else "1 CPU thread each"


def plan_actors(
    cpus: float,
    gpus: float,
    *,
    workers: int | None = None,
    eval_workers: int | None = None,
    gpus_per_worker: float | None = None,
    eval_gpus_per_worker: float | None = None,
    evaluated: bool = True,
) -> ActorPlan:
    """The actors for a cluster with `cpus` CPUs and `gpus` GPUs; explicit counts are kept as given."""
    eval_share = eval_gpus_per_worker
    if eval_share is None:  # by default, evaluation shares the GPUs where the anonymize share is the default
        eval_share = EVAL_GPU_SHARE if gpus > 0 and evaluated and gpus_per_worker is None else 0.0
    default_share = 1.0 - eval_share if gpus > 0 else 0.0  # the GPU's rest (the share is at most 0.5)
    gpu_share = gpus_per_worker if gpus_per_worker is not None else default_share
    cores = max(1, int(cpus))
    if gpu_share:
        # One anonymize actor per GPU by default; with a share given, as many as fit.
        anonymize = workers or max(1, int(gpus) if gpus_per_worker is None else int(gpus // gpu_share))
        # GPU actors each take a CPU to feed them; the rest evaluate (on the GPUs, one per GPU, by default).
        evaluate = eval_workers or (max(1, int(gpus)) if eval_share else max(1, cores - anonymize))
    elif not evaluated:
        anonymize, evaluate = workers or cores, 0
    elif workers and not eval_workers:
        anonymize, evaluate = workers, max(1, cores - workers)
    else:
        evaluate = eval_workers or max(1, cores // 4)
        anonymize = workers or max(1, cores - evaluate)
    evaluate = evaluate if evaluated else 0
    actors = anonymize + max(evaluate, 1)  # an anonymize-only job has one writer actor
    eval_gpus = float(eval_share) if evaluate else 0.0
    return ActorPlan(anonymize, evaluate, float(gpu_share), min(0.5, cpus / 2 / actors), eval_gpus)


# `boomerang evaluate` runs nothing else: two evaluation actors share each GPU.
EVAL_ONLY_GPU_SHARE = 0.5


def plan_evaluation(
    cpus: float, gpus: float, *, eval_workers: int | None = None, eval_gpus_per_worker: float | None = None
) -> ActorPlan:
    """`boomerang evaluate`'s actors: every CPU evaluates (one thread each), or two actors per GPU."""
    share = eval_gpus_per_worker if eval_gpus_per_worker is not None else (EVAL_ONLY_GPU_SHARE if gpus else 0.0)
    evaluate = eval_workers or max(1, int(gpus / share) if share else int(cpus))
    return ActorPlan(0, evaluate, 0.0, min(0.5, cpus / 2 / evaluate), float(share))
