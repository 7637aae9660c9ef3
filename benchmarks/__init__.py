"""Benchmarks: each module measures one stage and returns rows for the table in BENCHMARKS.md."""
