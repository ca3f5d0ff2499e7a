"""Evaluation: scores against references, speed benchmarks, the crop suite of cut fields of view."""
