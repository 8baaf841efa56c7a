"""Methods run apart from the measurement: each method explains in a worker process (`session`, `worker`; a job's
built-ins share one, a plugin has its own: `pool`), handed a copy of the model with no wall attribute (`handed`),
checked after every call, within time and memory limits (`limits`); the harness knows a method only by what it says
of itself (`handle`) and reads its replies without unpickling them (`wire`)."""
from .handle import MethodHandle, from_instance, imports_of, method_handle
from .limits import Limits
from .pool import WorkerPool, worker_pool
from .session import Session, SetupFailure, Worker, WorkerFailure, start_server

__all__ = ["Limits", "MethodHandle", "Session", "SetupFailure", "Worker", "WorkerFailure", "WorkerPool",
           "from_instance", "imports_of", "method_handle", "start_server", "worker_pool"]
