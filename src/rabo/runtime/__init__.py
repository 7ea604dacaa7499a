"""Runtimes that execute the client and server steps: in-process simulation (and Flower)."""
