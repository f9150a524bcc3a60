"""valqd: a job-queue server that speaks RESP and the VALQ command family."""

__version__ = "0.1.0"
