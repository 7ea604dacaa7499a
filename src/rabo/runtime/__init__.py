"""Runtimes that carry the client steps: the run loop both share (loop.py), in process
(simulate.py) and on Flower (wire.py, flower.py, local.py, reaper.py), and a pool of worker
processes for independent runs (pool.py)."""
