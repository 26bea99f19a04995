"""Communication: the process group and device (:class:`~distinv.comm.context.DistributedContext`), collectives and
the agreement that keeps ranks in step, gathers of uneven items, autograd through collectives, and replicated
trainable parameters."""
