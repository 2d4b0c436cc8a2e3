"""robustbench-er: an adversarial-robustness benchmarking harness for PyTorch."""

__version__ = "0.1.0"
