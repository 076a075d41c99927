"""Let accelerate run FSDP on CPU processes, for the multi-process tests only.

accelerate turns FSDP on only for accelerator devices (GPU, NPU, XPU, ...): on CPU processes
it silently trains under plain DDP. torch's FSDP2 itself runs on CPU over gloo, so the tests
mark the state as FSDP once the Accelerator is built; everything after that (wrapping,
sharded checkpoints, resume) is accelerate's and torch's real FSDP2 path.
"""

import accelerate
from accelerate.state import PartialState
from accelerate.utils import DistributedType

_build_accelerator = accelerate.Accelerator.__init__


def _build_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _build_accelerator(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.state.distributed_type == DistributedType.MULTI_CPU:
        self.state.fsdp_plugin = fsdp_plugin
        self.state.distributed_type = DistributedType.FSDP
        # AcceleratorState copies PartialState's type whenever it is built again.
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


accelerate.Accelerator.__init__ = _build_with_fsdp_on_cpu
