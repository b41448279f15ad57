"""Scheduled workflows: workflow files, ledger, PACS connectors, runner.

* :mod:`~medfuse.workflow.config` — load and validate a workflow file (:func:`load_workflow`).
* :mod:`~medfuse.workflow.ledger` — the crash-safe SQLite ledger of jobs.
* :mod:`~medfuse.workflow.sources` — folder, DICOMweb and DIMSE connectors.
* :mod:`~medfuse.workflow.runner` — one pass of a workflow (:func:`run_workflow`).

See ``docs/workflows.md`` for the operator's walk-through.
"""
