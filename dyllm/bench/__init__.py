"""`dyllm bench`: accuracy against throughput for every policy, on the reference task suite.

For one model, a list of methods (a policy and its parameters) and a list of decoding settings
(tokens per step, threshold parallel decoding), the benchmark generates answers to held-out
problems, scores them with the suite's scorer and times the generation (warm-up excluded, runs
repeated, medians). It reports a terminal table, a JSON file and a PNG of the accuracy-throughput
curves in the style of the DyLLM paper's main figure.

    from dyllm.bench import BenchSettings, run_benchmark
    report = run_benchmark(BenchSettings(model="llada-ref", problems_per_task=8))
"""

from dyllm.bench.decoding import Decoding, default_decodings
from dyllm.bench.methods import MethodSpec, default_methods, parse_method
from dyllm.bench.plot import draw_curves
from dyllm.bench.runner import BenchSettings, run_benchmark
from dyllm.bench.schema import SCHEMA_VERSION, check_report
from dyllm.bench.table import format_table

__all__ = [
    "SCHEMA_VERSION",
    "BenchSettings",
    "Decoding",
    "MethodSpec",
    "check_report",
    "default_decodings",
    "default_methods",
    "draw_curves",
    "format_table",
    "parse_method",
    "run_benchmark",
]
