"""Analysis of edge scores: circuit metrics (intensity, entropy, concentration), paired statistics, base-vs-tuned
comparisons, tables and plots.

Layout: `metrics.py` (statistics OF the scores, per example and per layer) and `stats.py` (the paired
test every comparison uses) under `comparison.py` (two attributions on the same prompts) and `report.py`
(records, CSV, markdown); `plot.py` (matplotlib figures) is imported on its own, so this face loads no
plotting library. `viewer.py` writes the interactive circuit page (self-contained HTML) from what
`viewer_data.py` lays out.
"""

from circuitdyn.analysis.comparison import Comparison, ComparisonError, MetricDelta, compare, edge_diff
from circuitdyn.analysis.metrics import METRIC_NAMES, MetricsError, circuit_metrics, per_layer_metrics
from circuitdyn.analysis.stats import Direction, PairedStat, fdr_adjust, paired_stat
from circuitdyn.analysis.viewer import render_view, view

__all__ = ["METRIC_NAMES", "Comparison", "ComparisonError", "Direction", "MetricDelta", "MetricsError", "PairedStat",
           "circuit_metrics", "compare", "edge_diff", "fdr_adjust", "paired_stat", "per_layer_metrics", "render_view", "view"]
