"""The metric: the LPIPS distance, its ranking heads and scores, and the files it comes in.

`lpips` (the distance core and the `LPIPS` module), `heads` (ranking losses), `metrics` (2AFC and
JND scores), `checkpoint` (a trained run's checkpoint), `lpips_names` (the `lpips` package's keys).
"""
