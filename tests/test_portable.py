"""The vector-kernels-off pass (`make test-portable`, part of .ci/run) really runs torch's
scalar kernels: ATEN_CPU_CAPABILITY=default must reach torch, or that pass proves nothing."""

import os

import pytest
import torch


@pytest.mark.skipif(os.environ.get("ATEN_CPU_CAPABILITY") != "default",
                    reason="only in the vector-kernels-off pass")
def test_vector_kernels_are_off_when_asked():
    assert torch.backends.cpu.get_cpu_capability() == "DEFAULT"
