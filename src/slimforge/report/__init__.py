"""The report: one versioned JSON document; CSV, HTML and PNG plots render it."""

from slimforge.report.build import SCHEMA_VERSION, build_report, variant_entry
from slimforge.report.render import write_report

__all__ = ["SCHEMA_VERSION", "build_report", "variant_entry", "write_report"]
