"""What every job command shares: preparing the job, the errors that mean "cannot run", the closing lines."""

from __future__ import annotations

from collections.abc import Callable

from anonymize import WeightsNotFound
from evaluation import MissingWeights
from pipeline.execution.cluster import ClusterUnavailable
from pipeline.execution.inputs import InputError
from pipeline.execution.job import Job, JobError, JobFailed, prepare, record_failure
from pipeline.execution.messages import kept_outputs
from pipeline.folder.layout import OutputError
from pipeline.folder.lock_common import LockLost
from pipeline.folder.provenance import RefusedRerun
from pipeline.outputs.finalize import JobResult, closing_lines
from pipeline.settings.config import JobSettings, SettingsError

# Errors that mean "this job cannot run": one line on stderr and exit status 2, never a trace.
CANNOT_RUN = (SettingsError, InputError, OutputError, JobError, RefusedRerun, WeightsNotFound, MissingWeights)
EXIT_STRICT = 3

__all__ = ["CANNOT_RUN", "ClusterUnavailable", "JobFailed", "Terminated", "run_job"]


class Terminated(KeyboardInterrupt):
    """SIGTERM: handled like Ctrl-C (the run is recorded as interrupted and resumes when rerun)."""


def run_job(settings: JobSettings, stages: str, work: Callable[[Job], JobResult]) -> int:
    """Prepare the job (`stages`: pipeline.settings.fingerprint.ANONYMIZE_AND_EVALUATE, ...), do `work`, print
    the closing lines.

    A failure after the start is recorded in run.json (the trace in private/) and is one line; an
    interruption is recorded as such; the folder's lock is released in every case.
    """
    job = prepare(settings, stages)
    try:
        result = work(job)
    except CANNOT_RUN:
        raise
    except KeyboardInterrupt as err:
        err.kept = kept_outputs(job)  # the terminal's line and run.json say how much was kept
        record_failure(job, err, status="interrupted")
        raise
    except ClusterUnavailable as err:  # its message already says what to do; nothing ran
        record_failure(job, err)
        raise
    except LockLost as err:  # another driver has the folder now: its run.json is not ours to write
        raise JobFailed(str(err)) from err
    except Exception as err:  # a failure mid-job (disk full, a cluster gone): one line, resumable
        raise JobFailed(record_failure(job, err)) from err
    finally:
        job.close()
    print("\n".join(closing_lines(result)))
    if settings.strict and result.failed_rows:
        return EXIT_STRICT
    return 0
