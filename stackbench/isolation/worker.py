"""The worker process: where a method's code runs, and nothing of the measurement does.

It starts from a clean forkserver (torch and stackbench imported, no harness state), sends its prints to the
harness (`output`), ends with the harness, shuts its own network door and caps its memory; then it answers: make
a method (a built-in or plugin spec, or a class sent by value; a job's built-ins share a worker, a plugin has one
of its own), set it up on a view of the model it is handed, explain a batch, tear it down. Replies go back as JSON
plus raw array bytes (`wire`); a failure is a reply, never the end of the harness.
"""
from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import sys
import threading

import torch

from ..errors import StackbenchError, foreign_failure
from ..methods import get_method_class
from ..methods.backbone import Batch, backbone_for
from ..methods.passes import MethodFailure, as_array
from ..wall import Wall
from . import wire
from .handed import fill, wall_of
from .output import redirect

NO_NETWORK = "no network for saliency methods (a board re-run is offline)"
NO_PROCESSES = "no new processes for saliency methods (they would outlive the row)"
SPAWNING = ("os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen")


def _audit(event: str, args) -> None:
    # Audit hooks cannot be removed from Python: every socket but the harness's own Unix ones fails at once, and so
    # does starting a process (a subprocess could reach the network, and would outlive the worker).
    if event == "socket.getaddrinfo" or (event == "socket.connect" and args[0].family != socket.AF_UNIX) \
            or (event in ("socket.sendto", "socket.sendmsg") and args[0].family != socket.AF_UNIX):
        raise PermissionError(NO_NETWORK)
    if event in SPAWNING:
        raise PermissionError(NO_PROCESSES)


def _die_with_harness(conn) -> None:
    """End the moment the harness's end of the pipe closes, even inside a method that hangs: a harness killed
    outright never stops its workers itself (and the forkserver, which workers keep alive, outlives it). A thread
    waits in poll() for the peer's hang-up; the kill it sends is bound now, before any method's code runs."""
    if not hasattr(select, "POLLRDHUP"):  # not Linux: the harness's own kill and the closed pipe alone
        return
    kill, me, fd = os.kill, os.getpid(), conn.fileno()
    gone = select.POLLRDHUP | select.POLLHUP | select.POLLERR

    def watch():
        poll = select.poll()
        poll.register(fd, select.POLLRDHUP)
        while not any(ev & gone for _fd, ev in poll.poll()):
            pass
        kill(me, signal.SIGKILL)

    threading.Thread(target=watch, name="stackbench-harness-watch", daemon=True).start()
    _die_with_forkserver()


def _die_with_forkserver() -> None:
    """The watch above needs Python's lock, which a method blocked in a C call holds. So also: drop this worker's
    copy of the forkserver's keep-alive pipe (a worker starts no processes), so the forkserver ends with the
    harness, and have the kernel kill the worker when its parent, the forkserver, ends (Linux)."""
    from multiprocessing import forkserver

    fd = getattr(forkserver._forkserver, "_forkserver_alive_fd", None)
    if fd is None:
        return
    try:
        os.close(fd)
        forkserver._forkserver._forkserver_alive_fd = None
        parent = os.getppid()
        import ctypes

        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it ended before the signal was set
            os._exit(1)
    except (OSError, AttributeError, TypeError):  # not Linux: the watch alone
        pass


def _seal(memory_mb: int | None) -> None:
    """Its own process group (the harness kills the group), network and new processes off, hub libraries offline,
    Ctrl-C left to the harness, memory capped."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    sys.addaudithook(_audit)
    if memory_mb is not None:
        try:
            import resource

            cap = proc_status("VmData") + int(memory_mb) * 2**20
            resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
        except (ImportError, OSError, ValueError):  # not Linux: the harness's watch alone (see session)
            pass


def proc_status(key: str, pid: int | str = "self") -> int:
    """A byte count from Linux's /proc/PID/status (VmData, RssAnon); OSError where there is none."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {key} in /proc/{pid}/status")


def _method_class(payload):
    kind, what, _config = payload
    if kind == "class":
        import cloudpickle

        return cloudpickle.loads(what)
    return get_method_class(what)


def _reason(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):  # SIGINT is ignored here: the method raised it itself
        return "KeyboardInterrupt raised by the method itself (not by Ctrl-C)"
    return foreign_failure(e)


def _failure(e: BaseException, where: str, item: str = "0") -> dict:
    if isinstance(e, MethodFailure):
        return {"kind": "failed", "where": where, "reason": e.reason, "item": e.item}
    reason = _reason(e)
    memory = isinstance(e, MemoryError) or "allocate" in reason
    return {"kind": "failed", "where": where, "reason": f"raised {reason}", "item": item, "memory": memory}


def describe(cls, config: dict) -> dict:
    inst = cls(**config)
    return {"kind": "info", "name": inst.name, "needs": sorted(inst.needs), "architectures": list(inst.architectures),
            "rerun_spread": {k: float(v) for k, v in dict(inst.rerun_spread or {}).items()},
            "describe": inst.describe()}


class Server:
    """The worker's side: the methods it hosts (by slot: a job's built-ins share one worker, a plugin has its own),
    the models it was handed (by view token, one buffer each whatever the number of methods), and one instance of a
    method per view, on a module of its own over that buffer (its hooks are its own)."""

    def __init__(self):
        self.methods: dict[int, tuple] = {}   # slot -> (class, config)
        self.models: dict[str, tuple] = {}    # token -> (skeleton pickle, buffer, layout, crop)
        self.views: dict[tuple, tuple] = {}   # (slot, token) -> (backbone, instance)
        self.inbox = None

    def load(self, slot: int, payload, describe_it: bool = False) -> dict:
        cls, config = _method_class(payload), payload[2]
        reply = describe(cls, config) if describe_it else {"kind": "ok"}
        self.methods[slot] = (cls, config)
        return reply

    def model(self, token: str, skeleton: bytes, buffer, layout, crop: bool) -> None:
        self.models[token] = (skeleton, buffer, layout, crop)

    def view(self, slot: int, token: str, seed: int) -> dict:
        skeleton, buffer, layout, crop = self.models[token]
        model = fill(pickle.loads(skeleton), buffer, layout)  # the harness's own pickle of a module skeleton
        bb = backbone_for(model, wall=wall_of(model), live_crop=crop, check_crop=False)
        # The crop is set; keep only the geometry, so no Wall object with the band's side sits in the method's reach.
        bb._wall = Wall(grid=bb._wall.grid, masked_rows=0, input_size=bb._wall.input_size,
                        dead_from=bb._wall.input_size[0])
        cls, config = self.methods[slot]
        inst = cls(**config)
        self.views[slot, token] = (bb, inst)  # before setup: a failed set-up is still torn down
        inst.setup(bb, seed=seed)
        return {"kind": "ok"}

    def explain(self, slot: int, token: str, m: dict):
        """One call's maps: {"kind": "maps"} and the array."""
        bb, inst = self.views[slot, token]
        # views of the inbox, not copies: the harness writes it afresh before every call, so whatever a method does
        # to its inputs reaches only its own call
        ts = {key: wire.view(self.inbox, offset, dtype, shape).to(bb.device)
              for key, offset, dtype, shape in m["layout"]}
        x01 = ts["x01"]
        batch = Batch(x=bb.normalize(x01), x01=x01, targets=ts["targets"], logits=ts["logits"], index=m["index"],
                      ids=m["ids"], backbone=bb, activations=ts.get("activations"), gradients=ts.get("gradients"),
                      seed=m["seed"], extra={k[6:]: v for k, v in ts.items() if k.startswith("extra.")})
        return {"kind": "maps"}, as_array(inst.explain(batch))

    def teardown(self, slot: int) -> dict:
        """Every instance of the method torn down and forgotten."""
        failure = None
        for key in [k for k in self.views if k[0] == slot]:
            _bb, inst = self.views.pop(key)
            try:
                inst.teardown()
            except BaseException as e:  # noqa: BLE001 - reported, the others still torn down
                failure = failure or _reason(e)
        return {"kind": "ok", "failure": failure}

    def forget(self, slot: int) -> None:
        """A method gone (its evaluation over); the models stay for the job's next evaluation (`drop`)."""
        self.methods.pop(slot, None)
        for key in [k for k in self.views if k[0] == slot]:
            del self.views[key]

    def drop(self, tokens) -> None:
        """Models the job will not hand again, and whatever was set up on them."""
        for key in [k for k in self.views if k[1] in tokens]:
            del self.views[key]
        for token in tokens:
            self.models.pop(token, None)


def main(conn, start: dict) -> None:
    """The worker's life: seal, then answer until told to close (or the harness goes away)."""
    os.environ.clear()  # the harness's environment now, not the forkserver's when it started
    os.environ.update(start["env"])
    redirect(start["output"])
    _die_with_harness(conn)
    _seal(start["memory_mb"])
    torch.set_num_threads(start["threads"])
    os.chdir(start["cwd"])
    conn.send_bytes(wire.encode({"kind": "ok"}))
    _serve(conn, Server())


# Calls that send no reply: the harness need not wait for them.
QUIET = {"inbox": lambda s, buffer: setattr(s, "inbox", buffer), "model": Server.model, "forget": Server.forget,
         "drop": Server.drop}


def _serve(conn, server: Server) -> None:
    while True:
        try:
            op, *args = conn.recv()
        except (EOFError, OSError):
            return
        if op == "close":
            return
        if op in QUIET:
            try:
                QUIET[op](server, *args)
            except BaseException:  # noqa: BLE001 - nothing to answer; the next call finds what is missing
                pass
            continue
        if op == "explain":
            _explain(conn, server, *args)
        elif op in ANSWERED:
            reply, array = _answer(op, lambda op=op, args=args: (getattr(server, op)(*args), None))
            conn.send_bytes(_encode(op, reply, array)[0])


ANSWERED = ("load", "view", "teardown")


def _explain(conn, server: Server, slot: int, calls: list) -> None:
    """Several calls of one method (a batch on every view it is measured on) asked at once: a reply for each, as
    it is done, up to the first that fails. One request for all saves a round trip per view, and the harness's
    threads, idle meanwhile, are not spinning on the cores the method needs."""
    for token, m in calls:
        reply, array = _answer("explain", lambda token=token, m=m: server.explain(slot, token, m))
        data, kind = _encode("explain", reply, array)
        conn.send_bytes(data)
        if kind != "maps":
            return


def _answer(op: str, call) -> tuple[dict, object]:
    """(reply, array or None) of a call; its failure as a reply."""
    try:
        return call()
    except StackbenchError as e:  # a plugin spec that names nothing loadable: the user's one line
        return ({"kind": "error", "reason": str(e)} if op == "load" else _failure(e, op)), None
    except BaseException as e:  # noqa: BLE001 - the method's failure is a reply
        return _failure(e, op), None


def _encode(op: str, reply: dict, array) -> tuple[bytes, str]:
    """The reply's bytes, and its kind."""
    try:
        return wire.encode(reply, array), reply["kind"]
    except (ValueError, TypeError) as e:  # a describe() or reason JSON cannot hold
        return wire.encode({"kind": "failed", "where": op, "reason": f"its reply could not be sent: {e}"}), "failed"
