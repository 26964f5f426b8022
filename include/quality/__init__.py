"""Data-quality gates between the stages, with Great Expectations (GX 1.x).

- ``expectations``: GX as the pipeline runs it (an ephemeral context per process, no project
  folder, no analytics call, no progress bar) and what a failed validation is called in an error.
- ``suites``: what each stage's output must hold, in code, checked on one document at a time in
  the stage's Ray job (the failing document fails alone; see ``include.stages.base``).
- ``docs``: a run's validation results rendered as GX Data Docs among the run's artifacts.

Both tiers import this package: the stage jobs run the stage suites, the Airflow side checks the
run's totals (``include.control.quality``) and renders the Data Docs. It imports nothing of the
data plane: GX and pandas only.
"""

import logging

# GX logs its own registration at INFO (dozens of lines per process): a job's log is for its documents.
logging.getLogger("great_expectations").setLevel(logging.WARNING)
