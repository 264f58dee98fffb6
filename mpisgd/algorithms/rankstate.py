"""What one rank's checkpoint of an algorithm holds (:meth:`Algorithm.state_dict
<mpisgd.algorithms.base.Algorithm.state_dict>`), and putting it back.

The flat parameters and buffers, the optimizer's state, the gradient
scaler's (fp16), the step and round counters, the communicators' counters
(with groups, each level's), the step times and the injected delays' random
streams. Tensors, numbers, strings and containers of them only: a checkpoint
loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import torch


def take(algo) -> dict:
    """This rank's state of ``algo``, between two steps."""
    state = {"params": algo.flat.data, "buffers": algo.flat.buffers,
             "optimizer": algo.optimizer.state_dict(),
             "steps": algo.steps, "rounds": algo.rounds,
             "comm": algo.comm.counters(), "step_times": algo.timer.collected().state_dict()}
    if algo.scaler is not None:
        state["scaler"] = algo.scaler.state_dict()
    if algo.groups is not None:
        state["group_comms"] = [c.counters() for c in algo.groups.comms()]
    if algo.stragglers is not None:
        state["stragglers"] = algo.stragglers.state_dict()
    return state


def restore(algo, state: dict) -> None:
    """Put :func:`take`'s ``state`` (of this rank of an equal run) back into ``algo``."""
    with torch.no_grad():
        algo.flat.data.copy_(state["params"])
        algo.flat.buffers.copy_(state["buffers"])
    algo.optimizer.load_state_dict(state["optimizer"])
    if algo.scaler is not None:
        algo.scaler.load_state_dict(state["scaler"])
    algo.steps, algo.rounds = state["steps"], state["rounds"]
    algo.timer.times.load_state_dict(state["step_times"])
    comms = [algo.comm] + (list(algo.groups.comms()) if algo.groups is not None else [])
    for comm, saved in zip(comms, [state["comm"]] + state.get("group_comms", [])):
        comm.load_counters(saved)
    if algo.stragglers is not None:
        algo.stragglers.load_state_dict(state["stragglers"])
