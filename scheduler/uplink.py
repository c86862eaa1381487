"""The simulated uplink: one TCP-like connection over a trace's delivery opportunities.

It keeps what carries from one transfer to the next (when the link is free again, where in the
trace the last transfer ended, the congestion window, slow start after idling) and aborts a
transfer that would outlast the sender's timeout, as the live client gives up on an upload.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scheduler.traces import Trace, transfer


@dataclass(frozen=True)
class Upload:
    start_s: float  # when the first byte went out (the link may have been busy before)
    end_s: float    # last delivery, or the abort time when not `ok`
    ok: bool


class Uplink:
    def __init__(self, trace: Trace, rtt_s: float, *, start_s: float, cwnd0: int,
                 idle_restart_s: float) -> None:
        self.trace, self.rtt_s = trace, rtt_s
        self.cwnd0, self.idle_restart_s = cwnd0, idle_restart_s
        self.free_s = start_s                # the link is busy until then
        self.index = int(trace.index_at(start_s))  # first delivery opportunity not yet used
        self.last_end_s = -math.inf          # when the last transfer ended
        self.cwnd = cwnd0

    def window(self, start_s: np.ndarray | float) -> np.ndarray | int:
        """The congestion window a transfer starting at `start_s` gets (slow start after idle)."""
        idle = np.asarray(start_s) - self.last_end_s >= self.idle_restart_s
        if np.ndim(idle) == 0:
            return self.cwnd0 if bool(idle) else self.cwnd
        return np.where(idle, self.cwnd0, self.cwnd)

    def send(self, t0: float, nbytes: float, timeout_s: float = math.inf) -> Upload:
        """Start at or after `t0` (behind what is already on the link); give up after
        `timeout_s`, freeing the link at the abort time."""
        u0 = max(t0, self.free_s)
        tr = transfer(self.trace, u0, nbytes, self.rtt_s, cwnd0=self.window(u0), min_index=self.index)
        if tr.acked_s - u0 > timeout_s:
            abort = u0 + timeout_s
            self.index = max(self.index, int(self.trace.index_at(abort)))
            self.free_s = self.last_end_s = abort
            self.cwnd = self.cwnd0
            return Upload(u0, abort, False)
        self.index, self.free_s, self.last_end_s, self.cwnd = (
            tr.next_index, tr.last_delivery_s, tr.last_delivery_s, tr.cwnd_end)
        return Upload(u0, tr.last_delivery_s, True)
