"""The online scheduler: estimates + hysteresis + fallback around the pure model in core.py.

The live edge runtime and the simulator drive the same object: they report what they observe
(`observe_*`) with their own clock's time and ask `decide(now_s)` before each frame. Nothing here
reads a clock or does I/O.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from scheduler.core import (Choice, CompiledChooser, ConfigTable, Evaluation, Objective,
                            Predictions, Slo, State, Where, estimate_all)
from scheduler.estimators import BandwidthEstimator, Ewma


@dataclass(frozen=True)
class SchedulerParams:
    """Tuning knobs; the defaults are what the tests and benchmarks use."""

    initial_bandwidth_bps: float = 1e6     # before any upload: a pessimistic cellular uplink
    initial_rtt_ms: float = 60.0
    pipeline_depth: int = 6                # frames in flight the runtime allows
    margin: float = 0.10                   # switch only to a config better by this fraction...
    dwell_s: float = 0.4                   # ...for this long
    jump_margin: float = 0.5               # better by this much: switch at once
    probe_interval_s: float = 0.5          # while device-only, keep bandwidth known
    probe_bytes: int = 12_000              # smallest probe...
    probe_max_bytes: int = 256_000         # ...largest: sized to take probe_net_s at the estimate
    probe_net_s: float = 0.05
    measure_interval_s: float = 2.0        # offloading with no full-size sample this long: probe
    probe_share: float = 0.05              # offloading: probes take at most this share of the link
    backoff_initial_s: float = 0.5         # after a failure: first retry...
    backoff_max_s: float = 8.0             # ...doubling up to this
    timeout_min_s: float = 1.0             # an upload is failed after max(this, k * predicted,
    timeout_factor: float = 4.0            # k * a local run)
    scale_alpha: float = 0.2               # EWMA weight for device/cloud/queue/RTT samples
    relief: bool = True                    # run frames whole when the device would idle (below)


@dataclass(frozen=True)
class Decision:
    """What to do with the next frame, and why."""

    split: str
    bits: int | None
    where: Where
    key: str
    index: int
    latency_ms: float
    throughput_fps: float
    bytes: float
    cloud_ms: float
    drop_pp: float
    reason: str
    slo_met: bool
    fallback: bool
    relief: bool = False      # this frame runs locally because the uplink is backlogged


MAX_CLOUD_LOAD = 0.95  # a saturated server is predicted 20x slower, not infinitely


class Scheduler:
    """Chooses (split, bits) per frame for an objective under an SLO.

    Hysteresis: the current configuration is kept until another one is better by `margin`
    (relative objective, or relative SLO violation when the current one breaks the SLO)
    continuously for `dwell_s`, or by `jump_margin` at once. With the bandwidth estimator's step
    detection, a bandwidth step is followed in well under 2 s; noise within the margin never
    switches.

    Fallback: `observe_failure` sends every frame to the device and schedules retries with
    exponential back-off (`probe_due`); `observe_success` onloads again.

    Device relief (params.relief): a frame the chosen configuration would offload runs whole on
    the device instead when the device would otherwise idle: at the in-flight limit, when the
    slot time a local run leaves unused costs fewer frames than it gains (`_relief_pays`); and,
    for objectives without throughput, while the predicted uplink backlog (from its own offload
    decisions and the bandwidth estimate) means a local run would finish sooner. The chosen
    configuration does not change (no switch is counted); the model credits these frames in its
    throughput prediction (core.py).
    """

    def __init__(self, table: ConfigTable, objective: Objective, slo: Slo,
                 params: SchedulerParams | None = None) -> None:
        self.table = table
        self.objective = objective
        self.slo = slo
        self.p = params or SchedulerParams()
        a = self.p.scale_alpha
        self.bandwidth = BandwidthEstimator()
        self.rtt = Ewma(a, self.p.initial_rtt_ms)       # mean RTT, for latency predictions
        self._rtt_recent: deque[float] = deque(maxlen=32)  # min RTT: the bandwidth baseline
        self.queue = Ewma(a, 0.0)
        self.device_scale = Ewma(a, 1.0)
        self.cloud_scale = Ewma(a, 1.0)
        self.cloud_load = Ewma(a, 0.0)       # the server's reported utilisation
        # device-only is the incumbent until something beats it by the margin; None: pick the
        # best at once (after a fallback ends)
        self._current: int | None = table.full_index
        self._last_index: int | None = None
        self._better_since: float | None = None
        self._cloud_ok = True
        self._failures = 0
        self._retry_at = -math.inf
        self._last_upload_s = -math.inf
        self._link_done_s = -math.inf        # when the bytes of the uploads so far were through
        self._probe_in_flight = False
        self._last_probe_s = -math.inf
        self._probe_growth = 1.0            # doubles while probes come back too short to measure
        self.switches = 0
        self.relief_frames = 0
        self._uplink_free_s = -math.inf     # predicted time the uplink drains
        self._outstanding = 0               # offloaded frames without an answer yet
        self._sent: deque[tuple[float, float]] = deque()  # their (decided at, predicted flight s)
        self._flights: deque[float] = deque(maxlen=256)  # observed decision-to-answer times (s)
        self._thr_objective = any(m.value == "throughput" for m, _ in objective.weights) or \
            slo.min_throughput_fps is not None
        self._full_ms = table.configs[table.full_index].head_ms
        self._chooser = CompiledChooser(table, objective, slo)
        # per-config constants the observations are compared against
        self._head_ref = {c.split: c.head_ms for c in table.configs if c.head_ms > 0}
        self._pack_ref = {(c.split, c.bits): c.pack_ms for c in table.configs}
        self._tail_ref = {c.split: c.tail_ms for c in table.configs if c.where is not Where.DEVICE}

    # --- observations ----------------------------------------------------------------------

    def observe_upload(self, now_s: float, nbytes: float, seconds: float,
                       probe: bool = False, sent_s: float | None = None) -> None:
        """An upload of `nbytes` took `seconds` of network time (the server's own time taken
        out) from first byte to the server's acknowledgement (`probe`: it was a probe, not a
        frame). `sent_s`, when it was sent, lets uploads that overlapped on the link count only
        their own share of it (`_own_link_s`)."""
        if not probe:
            self._answered(now_s)
        base_s = self._base_rtt_s()
        self.bandwidth.add(now_s, nbytes, self._own_link_s(sent_s, seconds, base_s), base_s)
        if probe:
            measured = self.bandwidth.last_full_t_s == now_s
            self._probe_growth = 1.0 if measured else min(self._probe_growth * 2.0, 1024.0)
        self._last_upload_s = now_s
        self._probe_in_flight = False

    def _base_rtt_s(self) -> float:
        """The round trip an upload's time is measured above: the recent minimum, not the
        mean, so queueing in the network counts as transfer time."""
        return (min(self._rtt_recent) if self._rtt_recent else (self.rtt.value or 0.0)) / 1e3

    def _own_link_s(self, sent_s: float | None, seconds: float, rtt_s: float) -> float:
        """The upload's time with the link to itself, plus one RTT (what the estimator expects).

        An upload sent while an earlier one still held the link shared it (two connections) or
        waited behind it (one queue): from its own start it measures the link at a fraction of
        its rate. Counted from when the earlier one's bytes were through, a busy stretch's
        uploads add up to the stretch, so the estimate is the link's rate: with two uploads in
        flight live, the EV-DO half of the demo had read 0.4-0.5 Mbit/s on a 0.94 Mbit/s link.
        The link's timeline is the uploads' own (sent plus network time), never the answers':
        answers that bunch behind a batching cloud say nothing about the link, and reading the
        gaps between them as link time overestimated a Wi-Fi link many times over. Left alone:
        an overlap under one RTT (RTT jitter alone makes one, and it costs at most an RTT), and
        an upload whose share would be too short to measure the link. That includes one
        answered after a later-sent one whose bytes were through after its own: taken as a
        share of a few ms, such a 6 kB frame read 48 Mbit/s on a 0.8 Mbit/s 3G link, and as a
        lower bound it held the estimate there."""
        if sent_s is None:
            return seconds
        through_s = sent_s + seconds - rtt_s
        own = seconds
        shared_s = through_s - self._link_done_s
        if sent_s < self._link_done_s - rtt_s and shared_s >= self.bandwidth.full_net_s(rtt_s):
            own = min(seconds, shared_s + rtt_s)
        self._link_done_s = max(self._link_done_s, through_s)
        return own

    def observe_rtt(self, now_s: float, rtt_ms: float) -> None:
        if rtt_ms < 0:
            raise ValueError(f"rtt_ms must be >= 0, got {rtt_ms}")
        self.rtt.add(rtt_ms)
        self._rtt_recent.append(rtt_ms)

    def observe_device(self, split: str, ms: float, bits: int | None = None) -> None:
        """The device ran `split`'s head and packing (or 'full', the whole model) in `ms`.

        The reference is the profiled head plus the pack time of `bits` (default: the chosen
        configuration's bits when it is this split, else no packing)."""
        head = self._head_ref.get(split)
        if head is None:
            return
        if bits is None and self._current is not None:
            cur = self.table.configs[self._current]
            bits = cur.bits if cur.split == split else None
        ref = head + self._pack_ref.get((split, bits), 0.0)
        if ref and ref > 0 and ms > 0:
            self.device_scale.add(min(max(ms / ref, 0.2), 5.0))

    def observe_cloud(self, split: str, tail_ms: float, queue_ms: float) -> None:
        """The server's answer: its tail compute and queueing time for that frame."""
        ref = self._tail_ref.get(split)
        if ref and ref > 0 and tail_ms > 0:
            self.cloud_scale.add(min(max(tail_ms / ref, 0.1), 10.0))
        self.queue.add(max(queue_ms, 0.0))

    def observe_cloud_load(self, utilisation: float) -> None:
        """The server's reported utilisation (0..1, FORMATS "load"). A busy server has less
        left for this device: its tail stage is predicted 1 / (1 - utilisation) slower, so
        cloud-heavy configurations lose to later splits and device-only before it saturates."""
        if math.isfinite(utilisation):
            self.cloud_load.add(min(max(utilisation, 0.0), 1.0))

    def observe_failure(self, now_s: float, probe: bool = False) -> None:
        """Cloud down, 5xx or timeout: go device-only and retry with exponential back-off.

        Only a failed retry (a probe) doubles the back-off, or the first failure. The other frames
        in flight when the link died fail too, one timeout apart: they were sent before anything
        was known, and counting them pushed the first retry of a 1 s outage 4 s out (live, four
        frames in flight) where the simulator, whose queued frames were never sent, retried
        after 0.5 s."""
        if not probe:
            self._answered()
        self._probe_in_flight = False
        if not (probe or self._cloud_ok):
            return
        self._failures += 1
        self._cloud_ok = False
        delay = min(self.p.backoff_initial_s * 2 ** (self._failures - 1), self.p.backoff_max_s)
        self._retry_at = now_s + delay

    def observe_abandoned(self) -> None:
        """An offloaded frame was finished on the device without being sent (the cloud went
        down while it waited): it is no longer in flight, and nothing was learnt."""
        self._answered()

    def _answered(self, now_s: float | None = None) -> None:
        """One offloaded frame is no longer in flight (answered at `now_s`, failed or abandoned);
        answers come back about in order, so it is the oldest one."""
        self._outstanding = max(0, self._outstanding - 1)
        if self._sent:
            sent_s, _ = self._sent.popleft()
            if now_s is not None and now_s >= sent_s:
                self._flights.append(now_s - sent_s)

    def _relief_pays(self, now_s: float, full_s: float, dev_s: float, offload_fps: float) -> bool:
        """At the in-flight limit: run the frame whole (`full_s` on the device) rather than run
        its head and packing (`dev_s`) and wait for a slot?

        Relief gains one frame. What it costs is the slot time it leaves unused: if the oldest
        frame in flight answers after w, the offloaded frame would have left the device at
        max(dev_s, w), the whole run leaves it at full_s, and for the difference the offloading
        pipeline, `offload_fps` when it has slots, loses frames. So relief pays when
        offload_fps * E[(full_s - max(dev_s, w))+] < 1, the expectation over the recent flight
        times longer than the oldest frame's flight so far (w conditional on the time already
        spent; past every recent flight, a stall, expected to last as long again). On a weak
        board this weighs a 0.57 s local run against the ~30 frames a 60 frames/s pipeline
        would carry meanwhile; a threshold on a quantile of w ignored that, and cost 4-36% of
        the frames on cellular links with the heavy model."""
        k = self._outstanding - self.p.pipeline_depth
        if k < 0:
            return True
        if len(self._sent) <= k:
            return True
        sent_s, predicted_s = self._sent[k]
        elapsed = now_s - sent_s
        rest = ([f - elapsed for f in self._flights if f > elapsed] if self._flights
                else [max(predicted_s - elapsed, 0.0)])
        if not rest:
            rest = [elapsed]
        idle_s = sum(max(full_s - max(dev_s, w), 0.0) for w in rest) / len(rest)
        return offload_fps * idle_s < 1.0

    def observe_success(self, now_s: float) -> None:
        """An upload or probe got its answer: the cloud is reachable."""
        if not self._cloud_ok:
            self._current = None    # device-only was forced, not chosen: pick afresh, no dwell
        self._failures = 0
        self._cloud_ok = True
        self._probe_in_flight = False

    # --- probing ---------------------------------------------------------------------------

    @property
    def cloud_ok(self) -> bool:
        return self._cloud_ok

    @property
    def retry_at_s(self) -> float:
        return self._retry_at

    def probe_due(self, now_s: float) -> bool:
        """Whether the runtime should send a probe upload of `probe_bytes()` now.

        While frames run device-only: after a failure at the back-off time; otherwise when no
        upload has measured the link for `probe_interval_s`. While offloading: when no upload
        has been long enough to measure the link (a full-size sample, not a lower bound) for
        `measure_interval_s`; on a fast link with a long RTT small payloads never are, and the
        estimate would stay at what lower bounds prove. Then probes take at most `probe_share`
        of the link's time: on 3G (417 ms RTT) every 6 kB frame is a lower bound, and probes
        every 2 s took 45% of the bytes, leaving dyno at 0.7x cloud-only. One probe at a time.
        """
        if self._probe_in_flight:
            return False
        if not self._cloud_ok:
            return now_s >= self._retry_at
        on_device = self._current is None or self.table.configs[self._current].where is Where.DEVICE
        if on_device:
            return now_s >= self._last_upload_s + self.p.probe_interval_s
        last = self.bandwidth.last_full_t_s
        if last is not None and now_s < last + self.p.measure_interval_s:
            return False
        probe_s = self.probe_bytes() * 8.0 / (self.bandwidth.estimate_bps or self.p.initial_bandwidth_bps)
        return now_s >= self._last_probe_s + probe_s / self.p.probe_share

    def probe_bytes(self) -> int:
        """A probe long enough to be a full-size sample: probe_net_s of transfer at the current
        estimate, and twice what the estimator needs over this RTT (`full_net_s`), within
        [probe_bytes, probe_max_bytes]. An estimate built from lower bounds is too low to size
        it, so each probe that came back too short doubles the next one."""
        bw = self.bandwidth.estimate_bps or self.p.initial_bandwidth_bps
        net_s = max(self.p.probe_net_s, 2.0 * self.bandwidth.full_net_s(self._base_rtt_s()))
        want = max(bw * net_s / 8.0, self.p.probe_bytes) * self._probe_growth
        return int(min(want, self.p.probe_max_bytes))

    @property
    def chosen(self):
        """The chosen configuration (relief frames aside), or None before the first decision
        after a fallback."""
        return None if self._current is None else self.table.configs[self._current]

    def probe_started(self, now_s: float) -> None:
        self._probe_in_flight = True
        self._last_probe_s = now_s

    def slot_wait_budget_s(self) -> float:
        """How long a frame decided for offloading may wait for the in-flight limit before the
        runtime finishes it on the device instead (then `observe_abandoned`): a local run's
        time, so a link that stalls costs the device at most that, not the stall. Without
        relief (fixed policies, Neurosurgeon) frames wait for their slot."""
        if not self.p.relief:
            return math.inf
        return self._full_ms * float(self.device_scale.value or 1.0) / 1e3

    def upload_timeout_s(self, nbytes: float) -> float:
        """How long the runtime should wait for an upload before calling observe_failure:
        `timeout_factor` times what it should take, and never less than that many local runs.
        A failed upload is finished on the device and the next frames stay there until a
        retry, so on a weak board a late answer is cheaper than giving up (pi-zero2 runs the
        heavy model in 0.57 s: 1 s timeouts on slow LTE cost 5% of the frames)."""
        st = self.state()
        predicted = st.rtt_ms / 1e3 + nbytes * 8.0 / st.bandwidth_bps
        local_s = self._full_ms * st.device_scale / 1e3
        return max(self.p.timeout_min_s, self.p.timeout_factor * max(predicted, local_s))

    # --- deciding --------------------------------------------------------------------------

    def state(self) -> State:
        bw = self.bandwidth.estimate_bps or self.p.initial_bandwidth_bps
        return State(bandwidth_bps=bw, rtt_ms=float(self.rtt.value or 0.0),
                     queue_ms=float(self.queue.value or 0.0),
                     device_scale=float(self.device_scale.value or 1.0),
                     cloud_scale=float(self.cloud_scale.value or 1.0)
                     / (1.0 - min(float(self.cloud_load.value or 0.0), MAX_CLOUD_LOAD)),
                     pipeline_depth=self.p.pipeline_depth,
                     mix_full_ms=(self._full_ms * float(self.device_scale.value or 1.0)
                                  if self.p.relief else 0.0))

    def predictions(self) -> Predictions:
        """Every configuration's prediction under the current estimates (for inspection)."""
        return estimate_all(self.table, self.state())

    def decide(self, now_s: float) -> Decision:
        """The configuration for a frame starting now: hysteresis, fallback, device relief.

        Call it once per frame and run what it says: offload decisions are booked on the
        predicted uplink backlog."""
        st = self.state()
        d = self._decide_primary(now_s, st)
        if d.where is Where.DEVICE:
            return d
        c = self.table.configs[d.index]
        dev_s = c.head_ms * st.device_scale / 1e3 + c.pack_ms * st.device_scale / 1e3
        up_s = c.bytes * 8.0 / st.bandwidth_bps
        head_done = now_s + dev_s
        wait = self._uplink_free_s - head_done
        full_s = st.mix_full_ms / 1e3
        if not self.p.relief:
            relieve = False
        elif self._outstanding >= self.p.pipeline_depth:
            # in-flight limit: run the frame whole only if the device would otherwise idle at
            # least as long as that costs it beyond the head
            offload_fps = 1.0 / max(dev_s, up_s, d.cloud_ms / 1e3,
                                    d.latency_ms / 1e3 / self.p.pipeline_depth, 1e-6)
            relieve = self._relief_pays(now_s, full_s, dev_s, offload_fps)
        elif wait <= 0 or self._thr_objective:
            # For throughput a backlog below the in-flight limit costs latency, not frames: it
            # drains when the link recovers, and a local run would only take the device from
            # frames the link will carry (relieving on it cost 9% of the frames on Wi-Fi dips)
            relieve = False
        else:
            done_off = head_done + wait + up_s + (st.rtt_ms + st.queue_ms + d.cloud_ms) / 1e3
            relieve = now_s + full_s < done_off
        if relieve:
            self.relief_frames += 1
            i = self.table.full_index
            f = self.table.configs[i]
            return Decision(split=f.split, bits=f.bits, where=f.where, key=f.key, index=i,
                            latency_ms=st.mix_full_ms, throughput_fps=d.throughput_fps,
                            bytes=0.0, cloud_ms=0.0, drop_pp=f.drop_pp,
                            reason=f"relief: uplink backlogged {max(wait, 0) * 1e3:.0f} ms, "
                                   f"{self._outstanding} in flight; {d.key} stays chosen",
                            slo_met=d.slo_met,
                            fallback=False, relief=True)
        self._uplink_free_s = max(head_done, self._uplink_free_s) + up_s
        self._outstanding += 1
        self._sent.append((now_s, d.latency_ms / 1e3))
        return d

    def _decide_primary(self, now_s: float, st: State) -> Decision:
        """The chosen configuration (hysteresis and fallback), before device relief."""
        ev = self._chooser.evaluate(st)
        if not self._cloud_ok:
            i = self.table.full_index
            self._set(i, now_s)
            return self._decision(i, ev, st, f"fallback: cloud unreachable ({self._failures} "
                                  f"failures), retry at {self._retry_at:.2f}s", True)
        best: Choice = self._chooser.best(ev)
        cur = self._current
        if cur is None and best.index != self.table.full_index and \
                self._gain(ev, self.table.full_index, best.index) < self.p.margin:
            cur = self.table.full_index   # picking afresh: still only for a gain beyond the margin
        if cur is None or cur == best.index:
            self._better_since = None
            self._set(best.index, now_s)
            return self._decision(best.index, ev, st, best.reason, False)
        gain = self._gain(ev, cur, best.index)
        if gain >= self.p.jump_margin:
            self._set(best.index, now_s)
            return self._decision(best.index, ev, st,
                                  f"{best.reason}; switched at once ({gain:.0%} better)", False)
        if gain >= self.p.margin:
            if self._better_since is None:
                self._better_since = now_s
            if now_s - self._better_since >= self.p.dwell_s:
                self._set(best.index, now_s)
                return self._decision(best.index, ev, st,
                                      f"{best.reason}; switched after {self.p.dwell_s}s "
                                      f"({gain:.0%} better)", False)
            why = f"kept (a config {gain:.0%} better for {now_s - self._better_since:.2f}s)"
        else:
            self._better_since = None
            why = f"kept (best alternative only {gain:.0%} better)"
        return self._decision(cur, ev, st, why, False)

    def _gain(self, ev: Evaluation, cur: int, best: int) -> float:
        """How much better `best` is than `cur`, as a fraction (>= 0)."""
        acc, other, s = ev.acc, ev.other, ev.score
        if acc[cur] > acc[best] + 1e-9:
            return 1.0                                  # accuracy bound: always worth it
        oc, ob = float(other[cur]), float(other[best])
        if oc > 0 and ob <= 0:
            # leaving an SLO violation: urgent in proportion to how badly it is violated
            return min(1.0, self.p.margin + oc)
        if oc > 0:
            return (oc - ob) / oc
        sc = float(s[cur])
        return max(0.0, (sc - float(s[best])) / max(sc, 1e-12))

    def _set(self, i: int, now_s: float) -> None:
        if i != self._last_index and self._last_index is not None:
            self.switches += 1
        self._last_index = i
        if i != self._current:
            self._better_since = None
        self._current = i

    def _decision(self, i: int, ev: Evaluation, st: State, reason: str,
                  fallback: bool) -> Decision:
        c = self.table.configs[i]
        met = bool(ev.acc[i] <= 0.0 and ev.other[i] <= 0.0)
        return Decision(split=c.split, bits=c.bits, where=c.where, key=c.key, index=i,
                        latency_ms=float(ev.latency_ms[i]),
                        throughput_fps=self._chooser.throughput_at(ev, i, st),
                        bytes=c.bytes if c.where is not Where.DEVICE else 0.0,
                        cloud_ms=float(ev.cloud_ms[i]), drop_pp=c.drop_pp, reason=reason,
                        slo_met=met, fallback=fallback)


class PinnedScheduler:
    """One configuration always, except while the cloud is down (then device-only).

    The wrapped scheduler still learns from every observation and owns fallback and probing, so a
    fixed policy recovers exactly like `auto` does.
    """

    def __init__(self, inner: Scheduler, index: int, policy: str) -> None:
        self.inner = inner
        self.index = index
        c = inner.table.configs[index]
        self._decision = Decision(
            split=c.split, bits=c.bits, where=c.where, key=c.key, index=index, latency_ms=0.0,
            throughput_fps=0.0, bytes=c.bytes, cloud_ms=c.tail_ms, drop_pp=c.drop_pp,
            reason=f"policy {policy}: always {c.key}", slo_met=True, fallback=False)

    @classmethod
    def of(cls, table: ConfigTable, objective: Objective, slo: Slo, params: SchedulerParams,
           policy: str) -> "PinnedScheduler":
        """Pinned to the one offloading configuration of `table` (it and device-only), with no
        relief: how the edge runtime and the simulator run `cloud` and `fixed`."""
        pinned = next(i for i, c in enumerate(table.configs) if c.where is not Where.DEVICE)
        return cls(Scheduler(table, objective, slo, replace(params, relief=False)), pinned, policy)

    def decide(self, now_s: float) -> Decision:
        d = self.inner.decide(now_s)
        return d if d.fallback else self._decision

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
