"""``python tests/train/fsdp_on_cpu.py CONFIG key=value ...`` under ``accelerate launch`` with an FSDP config:
one trainer process whose accelerate runs its FSDP2 code on the CPU (tests only).

accelerate offers FSDP on accelerators only: on CPU processes it falls back to plain data parallelism
(MULTI_CPU) and ignores the FSDP config. torch's FSDP2 itself runs on CPU over gloo, so this switches
accelerate's state to FSDP right after the Accelerator starts, with the plugin that the launcher's
FSDP_* variables (from the config file) describe; from there on accelerate's own FSDP2 code runs
unchanged: ``fully_shard`` over a gloo device mesh, sharded gradient clipping, sharded checkpoints.
"""

from __future__ import annotations

import sys

import accelerate
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_start = accelerate.Accelerator.__init__


def _start_with_fsdp(self, *args, **kwargs) -> None:
    _start(self, *args, **kwargs)
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # AcceleratorState re-reads it
    self.state.distributed_type = DistributedType.FSDP
    self.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # settings from the launcher's FSDP_* variables


if __name__ == "__main__":
    accelerate.Accelerator.__init__ = _start_with_fsdp
    from ip2p_train.__main__ import main

    sys.exit(main())
