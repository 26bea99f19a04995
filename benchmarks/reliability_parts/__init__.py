"""The figures of ``benchmarks/reliability.py``, one module each (``r1_failing_rank`` ... ``r5_multinode``), and what
they share (``common``: launching with a time box, environment, JSON, memory, the small network and runner
configs; ``pnp_cases``: the distributed PnP cases of R4 and R5 and their single-process references).

Not named ``reliability``: a folder of that name beside ``reliability.py`` would shadow it on import.
"""
