"""Benchmarks (`python -m bench.<name>`): each prints its figures and a ratio to a baseline
measured in the same run; tests never assert on time, these scripts do the measuring."""
