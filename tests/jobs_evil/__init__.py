"""A package a worker must never import: `tests.jobs_evil` is not under the job package `tests.jobs`.

Importing it leaves a trace (tests check sys.modules, this variable, and the marker file when one
is named), so a test can show a forged payload naming it was refused without being imported.
"""
import os

os.environ["TESTS_JOBS_EVIL_IMPORTED"] = "1"
if os.environ.get("TESTS_JOBS_EVIL_MARKER"):
    with open(os.environ["TESTS_JOBS_EVIL_MARKER"], "a") as marker:
        marker.write(f"imported in pid {os.getpid()}\n")
