"""`dyllm bench`: accuracy against throughput for every policy, on a reference task suite.

For one model, its task suite (the short 24-token suite, or the long 128-token one for
`llada-long` and `--suite long`), a list of methods (a policy and its parameters), a list of
decoding settings (tokens per step, threshold parallel decoding) and one or more block lengths,
the benchmark generates answers to held-out problems, scores them with the suite's scorer and
times the generation (warm-up excluded, runs repeated, medians). It reports a terminal table, a
JSON file and a PNG of the accuracy-throughput curves in the style of the DyLLM paper's main
figure, one row of panels per block length.

    from dyllm.bench import BenchSettings, run_benchmark
    report = run_benchmark(BenchSettings(model="llada-ref", problems_per_task=8))
    report = run_benchmark(BenchSettings(model="llada-long", block_lengths=(8, 32)))
"""

from dyllm.bench.decoding import Decoding, default_decodings
from dyllm.bench.methods import MethodSpec, default_methods, parse_method
from dyllm.bench.plot import draw_curves
from dyllm.bench.runner import BenchSettings, run_benchmark
from dyllm.bench.schema import SCHEMA_VERSION, check_report, read_report, upgrade_report
from dyllm.bench.suites import resolve_suite
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
    "read_report",
    "resolve_suite",
    "run_benchmark",
    "upgrade_report",
]
