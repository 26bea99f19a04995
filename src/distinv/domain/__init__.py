"""Domain parallelism inside a network: each rank runs the network's layers on its own band of rows, exchanging
before every layer that reads neighbours just the rows that layer reads (exact for any receptive field)."""
