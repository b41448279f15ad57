"""The JSON schema of a workflow file (draft 2020-12).

The schema is the single source of truth for what a workflow file may
contain; ``workflows/workflow.schema.json`` is a byte-for-byte dump of
:data:`WORKFLOW_SCHEMA` for editors and other tools (a test keeps them equal).
Rules a schema cannot express clearly (plain-text secrets, schedule syntax,
regular expressions, fusion option names) are checked in
:mod:`medfuse.workflow.config`.
"""

from __future__ import annotations

import json

_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
_STRINGS = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}

_AUTH = {
    "type": "object",
    "additionalProperties": False,
    "description": "Credentials are never written here: name an environment variable or a 0600 file.",
    "properties": {
        "username": {"type": "string", "minLength": 1},
        "password_env": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "token_env": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "credentials_file": {"type": "string", "minLength": 1},
    },
}

_TLS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "ca_file": {"type": "string", "minLength": 1},
        "cert_file": {"type": "string", "minLength": 1},
        "key_file": {"type": "string", "minLength": 1},
        "verify": {"type": "boolean"},
    },
}

_NETWORK = {
    "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
    "retries": {"type": "integer", "minimum": 0, "maximum": 10},
    "backoff_s": {"type": "number", "minimum": 0, "maximum": 600},
}

_DICOMWEB = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        "url": {"type": "string", "pattern": "^https?://"},
        "auth": _AUTH,
        "tls": _TLS,
        **_NETWORK,
    },
}

_DIMSE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["host", "port", "called_aet"],
    "properties": {
        "host": {"type": "string", "minLength": 1},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "called_aet": {"type": "string", "pattern": "^[ -~]{1,16}$"},
        "calling_aet": {"type": "string", "pattern": "^[ -~]{1,16}$"},
        "tls": _TLS,
        **_NETWORK,
    },
}

_FOLDER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["path"],
    "properties": {
        "path": {"type": "string", "minLength": 1},
        "stable_after_s": {"type": "number", "minimum": 0, "maximum": 604800,
                           "description": "seconds without new files before a study is taken (at most a week)"},
    },
}

_SERIES_RULE = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "modality": {"type": "string", "pattern": "^[A-Z]{2,4}$"},
        "description": {"type": "string", "minLength": 1, "description": "regular expression (Python re.search)"},
        "body_part": {"type": "string", "minLength": 1},
        "orientation": {"enum": ["axial", "coronal", "sagittal", "oblique"]},
    },
}

WORKFLOW_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://medfuse.invalid/workflow.schema.json",
    "title": "medfuse workflow",
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "name", "source", "select", "outputs"],
    "properties": {
        "version": {"const": 1},
        "name": _NAME,
        "description": {"type": "string"},
        "state_dir": {"type": "string", "minLength": 1},
        "schedule": {"type": "string", "minLength": 1},
        "source": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "maxProperties": 2,
            "properties": {
                "folder": _FOLDER,
                "dicomweb": _DICOMWEB,
                "dimse": _DIMSE,
                "query": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "modalities_in_study": _STRINGS,
                        "study_description": {"type": "string", "minLength": 1},
                        "since_days": {"type": "integer", "minimum": 1, "maximum": 36500},
                        "limit": {"type": "integer", "minimum": 1, "maximum": 100000},
                    },
                },
            },
        },
        "select": {
            "type": "object",
            "additionalProperties": False,
            "required": ["fixed", "moving"],
            "properties": {"fixed": _SERIES_RULE, "moving": _SERIES_RULE},
        },
        "fusion": {"type": "object", "description": "keyword options of medfuse fuse-study (StudyOptions)"},
        "outputs": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {
                "folder": {"type": "string", "minLength": 1},
                "nifti": {"type": "boolean"},
                "pacs": {"type": "boolean", "description": "store the fused series back into the same study on the source PACS"},
                "deliver_doubtful_registration": {
                    "type": "boolean",
                    "description": "deliver a study whose registration the alignment check doubts (default false: "
                                   "held for review, ledger state 'held')",
                },
            },
        },
        "retries": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"max_attempts": {"type": "integer", "minimum": 1, "maximum": 20}},
        },
    },
}


def schema_json() -> str:
    """The schema as the text of ``workflows/workflow.schema.json``."""
    return json.dumps(WORKFLOW_SCHEMA, indent=2, sort_keys=True) + "\n"
