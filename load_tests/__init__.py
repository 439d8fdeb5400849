"""The benchmark: ``python -m load_tests.bench`` (the model's limit, the service, the
framework floor and a Flask baseline side by side in one run; see docs/benchmarks.md)."""
