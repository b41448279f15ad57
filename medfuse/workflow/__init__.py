"""Scheduled workflows: workflow files, ledger, PACS connectors."""
