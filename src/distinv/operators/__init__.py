"""Operators: lean forward models (deepinv ``LinearPhysics``): the parallel-beam and cone-beam projectors, and the ASTRA
backend behind them."""
