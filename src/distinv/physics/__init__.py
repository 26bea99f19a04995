"""Distributed physics, split by operator: the stack (:class:`~distinv.physics.stack.DistributedStackedPhysics`), its
linear algebra (:class:`~distinv.physics.linear.DistributedStackedLinearPhysics`) and the data fidelity."""
