"""Airflow import errors for invalid Blaze pipeline templates (no DAG is defined here).

``blaze_templates.py`` builds a DAG for every valid template and skips invalid ones; this file
fails to import with one line per invalid template (file, step, field), so Airflow shows the
problem in its UI and API while the valid templates keep running.
"""

from __future__ import annotations

from pipelines.settings import load_settings
from pipelines.templates.spec import TemplateError, invalid_templates

_problems = invalid_templates(load_settings().templates_dir)
if _problems:
    raise TemplateError("invalid pipeline templates: " + " | ".join(_problems))
