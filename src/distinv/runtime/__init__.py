"""Runtime: what the launcher started (ranks, hosts, devices), memory and its budgets, device-synchronised timing,
and the assignment of work by cost. Imports nothing else of distinv."""
