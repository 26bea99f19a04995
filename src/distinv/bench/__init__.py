"""The benchmark: problems, solvers, measurements, launching and results (grows issue by issue)."""
