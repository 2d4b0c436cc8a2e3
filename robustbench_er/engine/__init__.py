"""The engine: sweep specs, plan, per-sample search, cell runner, executors, trained models, checks, the detection and analysis protocols."""
