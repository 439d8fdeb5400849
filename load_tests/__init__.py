"""Load tests and benchmarks: ``python -m load_tests.bench`` (one command, every figure of
issue 4 side by side) and ``locustfile.py`` (exploring by hand)."""
