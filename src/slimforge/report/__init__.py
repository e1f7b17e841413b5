"""The report: one versioned JSON document (``report.build``); CSV, HTML and PNG plots render it."""

from slimforge.report.build import SCHEMA, SCHEMA_VERSION, build_report, document, variant, variant_entry
from slimforge.report.render import write_report

__all__ = ["SCHEMA", "SCHEMA_VERSION", "build_report", "document", "variant", "variant_entry", "write_report"]
