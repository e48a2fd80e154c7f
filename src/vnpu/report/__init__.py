"""Reports on simulated runs: rich tables, the JSON run report, Chrome/Perfetto traces.

* :mod:`vnpu.report.tables` — ``summary_table``, ``kernel_table``, ``numerics_table``,
  ``chips_table``, ``chip_detail``, ``workloads_table``;
* :mod:`vnpu.report.json_report` — ``build_report`` / ``write_report``; its docstring is the
  JSON schema of ``vnpu run --json``;
* :mod:`vnpu.report.trace` — ``chrome_trace`` / ``write_trace`` / ``timing_trace``;
* :mod:`vnpu.report.numerics` — ``compare`` (simulated outputs vs PyTorch eager) and the pass criteria;
* :mod:`vnpu.report.metrics` — ``run_metrics``: derived figures shared by tables and JSON.
"""
from vnpu.report.json_report import SCHEMA_VERSION, build_report, write_report
from vnpu.report.metrics import RunMetrics, run_metrics
from vnpu.report.numerics import Numerics, compare
from vnpu.report.tables import (chip_detail, chips_table, kernel_table, numerics_table, summary_table,
                                workloads_table)
from vnpu.report.trace import chrome_trace, timing_trace, write_trace

__all__ = ["build_report", "write_report", "SCHEMA_VERSION", "RunMetrics", "run_metrics", "Numerics", "compare",
           "summary_table", "kernel_table", "numerics_table", "chips_table", "chip_detail", "workloads_table",
           "chrome_trace", "write_trace", "timing_trace"]
