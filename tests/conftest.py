"""Tests run single-threaded: the models are small and two test workers share two cores."""

import torch

torch.set_num_threads(1)
