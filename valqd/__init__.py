"""valqd: a job-queue server that speaks RESP and the VALQ command family."""

from .buildinfo import select

__version__ = "0.1.0"
# compiled or pure; decided before any compiled module is imported (see buildinfo.py)
BUILD = select()
