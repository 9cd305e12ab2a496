"""One model across several processes with torch.distributed (docs/tensor-parallel.md).

* `plan.py`: how a model's shape splits over N processes (Megatron's layout), or why it cannot;
* `communicator.py`: the model's `Communicator` hook on a torch.distributed process group;
* `loading.py`: `load_tensor_parallel`, reading only this process's slices of the checkpoint;
* `launch.py`: joining the group torchrun describes, rank-0 printing, setup errors agreed on by
  every process;
* `data_parallel.py`: shares of prompts per process, results gathered in order;
* `accounting.py`: weight bytes per process and bytes communicated per step, from the shapes.

The model itself only knows its shard and the communicator interface (`dyllm.models.parallel`);
this package sits above the engine and the models.
"""

from dyllm.distributed.communicator import CountingCommunicator, ProcessGroupCommunicator
from dyllm.distributed.launch import (
    ProcessGroupError,
    agree,
    is_main_process,
    join_from_environment,
)
from dyllm.distributed.loading import load_tensor_parallel
from dyllm.distributed.plan import (
    TensorParallelError,
    TensorParallelPlan,
    plan_tensor_parallel,
    valid_sizes,
)

__all__ = [
    "CountingCommunicator",
    "ProcessGroupCommunicator",
    "ProcessGroupError",
    "TensorParallelError",
    "TensorParallelPlan",
    "agree",
    "is_main_process",
    "join_from_environment",
    "load_tensor_parallel",
    "plan_tensor_parallel",
    "valid_sizes",
]
