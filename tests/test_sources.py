"""edge_runtime.sources: video files, streams and cameras as frame sources (OpenCV).

Pacing is checked on a fake clock (and a fake camera for live sources), never on real time, so
these tests do not depend on how busy the machine is.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from edge_runtime.images import ImageError
from edge_runtime.sources import FrameSource, display_name, frames_from
from tests.conftest import run_module

cv2 = pytest.importorskip("cv2")

N, W, H = 30, 64, 48
STEP = 8  # frame i is grey level i * STEP, with a pure red 16x16 block at the top left


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (W, H))
    assert writer.isOpened(), "this OpenCV build cannot write MJPG .avi"
    for i in range(N):
        frame = np.full((H, W, 3), i * STEP, np.uint8)
        frame[:16, :16] = (0, 0, 255)  # BGR: red
        writer.write(frame)
    writer.release()
    return path


def read_all(video, **kw):
    clock = FakeClock()
    with frames_from(str(video), clock=clock, sleep=clock.sleep, **kw) as src:
        frames = list(src)
    return frames, src, clock


def grey_level(image: np.ndarray) -> float:
    h, w = image.shape[:2]
    return float(image[h // 2:, w // 2:].mean())  # away from the red block


def test_reads_every_frame_in_order_as_rgb(video):
    frames, src, clock = read_all(video, shape=(H, W, 3))
    assert [f.index for f in frames] == list(range(N))
    assert (src.delivered, src.skipped, src.source_fps) == (N, 0, pytest.approx(30.0))
    assert frames[0].name == "clip.avi#0" and frames[0].label is None
    for i, f in enumerate(frames):
        assert f.image.shape == (H, W, 3) and f.image.dtype == np.float32
        assert abs(grey_level(f.image) - i * STEP) < 6, i
    r, g, b = frames[5].image[8, 8]
    assert r > 200 and g < 60 and b < 60  # channel 0 is red: BGR was converted
    assert clock.t == pytest.approx((N - 1) / 30.0)  # replayed at the file's own rate


def test_resizes_and_greys_to_the_model_input(video):
    frames, _, _ = read_all(video, shape=(24, 32, 3))
    assert frames[0].image.shape == (24, 32, 3)
    assert abs(grey_level(frames[10].image) - 10 * STEP) < 6
    assert frames[10].image[4, 4, 0] > 200
    frames, _, _ = read_all(video, shape=(H, W, 1))
    assert len(frames) == N and frames[3].image.shape == (H, W, 1)
    assert frames[3].image.dtype == np.float32
    assert abs(grey_level(frames[20].image) - 20 * STEP) < 6
    assert 50 < frames[20].image[8, 8, 0] < 110  # red as grey: 0.299 * 255


def test_limit_stops_early_and_releases(video):
    frames, src, _ = read_all(video, shape=(H, W, 3), limit=7)
    assert [f.index for f in frames] == list(range(7)) and src.delivered == 7
    assert src._closed
    with pytest.raises(StopIteration):
        next(src)


def test_missing_file_and_bad_shape(tmp_path, video):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(ImageError, match="nope.mp4"):
        frames_from(str(missing), shape=(H, W, 3))
    with pytest.raises(ImageError, match="C 1 or 3"):
        frames_from(str(video), shape=(H, W, 4))
    not_video = tmp_path / "notes.avi"
    not_video.write_text("not a video")
    try:
        src = frames_from(str(not_video), shape=(H, W, 3))
    except ImageError as e:
        assert "notes.avi" in str(e) and "\n" not in str(e)
    else:  # a backend that opens anything fails on the first frame: an empty source, not a crash
        assert list(src) == [] and src.delivered == 0


def test_unreachable_stream_fails_fast():
    url = "rtsp://127.0.0.1:9/none"  # loopback, discard port: refused at once
    with pytest.raises(ImageError, match="Cannot open stream rtsp://127.0.0.1:9/none"):
        frames_from(url, shape=(H, W, 3))


def test_missing_camera_and_display_name():
    with pytest.raises(ImageError, match="/dev/video987"):
        frames_from("/dev/video987", shape=(H, W, 3))
    assert display_name("rtsp://user:secret@10.0.0.1:554/cam?x=1") == "rtsp://10.0.0.1:554/cam"


def test_file_pacing_skips_what_a_slow_consumer_missed(video):
    clock = FakeClock()
    delivered = []
    with frames_from(str(video), shape=(H, W, 3), fps=10, clock=clock, sleep=clock.sleep) as src:
        for frame in src:
            delivered.append(frame.index)
            clock.t += 0.35  # the pipeline takes 3.5 frame periods
    assert src.delivered == len(delivered) and src.skipped + src.delivered == N
    assert 2 <= src.skipped / src.delivered <= 3
    assert delivered == sorted(set(delivered)) and all(2 <= b - a <= 4 for a, b in zip(delivered, delivered[1:]))


def test_file_pacing_fast_consumer_skips_nothing(video):
    clock = FakeClock()
    with frames_from(str(video), shape=(H, W, 3), fps=10, clock=clock, sleep=clock.sleep) as src:
        for _ in src:
            clock.t += 0.02
    assert (src.skipped, src.delivered) == (0, N)
    assert clock.t == pytest.approx((N - 1) / 10 + 0.02)


class FakeCamera:
    """A live source on a fake clock: frame k exists from k / fps; a ring buffer keeps the newest
    `buffer` frames; grab() blocks (advances the clock) when no frame is waiting."""

    def __init__(self, clock: FakeClock, fps: float = 10.0, buffer: int = 4, n: int = 200,
                 reported_fps: float | None = None):
        self.clock, self.period, self.buffer, self.n = clock, 1.0 / fps, buffer, n
        self.fps, self.next, self.current, self.lost, self.released = fps, 0, -1, 0, False
        self.reported_fps = fps if reported_fps is None else reported_fps
        self.grabs = 0

    def get(self, prop):
        return self.reported_fps if prop == cv2.CAP_PROP_FPS else 0.0

    def grab(self) -> bool:
        if self.next >= self.n:
            return False
        self.grabs += 1
        made = int(self.clock.t / self.period + 1e-9) + 1
        if self.next < made - self.buffer:  # overwritten in the driver's buffer
            self.lost += made - self.buffer - self.next
            self.next = made - self.buffer
        if self.next >= made:
            self.clock.t = self.next * self.period
        self.current, self.next = self.next, self.next + 1
        return True

    def retrieve(self):
        return True, np.full((6, 8, 3), self.current % 256, np.uint8)

    def read(self):
        return self.retrieve() if self.grab() else (False, None)

    def release(self) -> None:
        self.released = True


def run_live(consumer_s: float, n_frames: int = 20, buffer: int = 4, fps: float | None = None,
             camera: FakeCamera | None = None, clock: FakeClock | None = None):
    """A 10 fps fake camera read by a consumer that takes `consumer_s` per frame."""
    clock = clock or FakeClock()
    cam = camera or FakeCamera(clock, fps=10.0, buffer=buffer)
    got = []
    with FrameSource(cam, name="cam", shape=(6, 8, 3), live=True, clock=clock,
                     sleep=clock.sleep, limit=n_frames, fps=fps, cv2=cv2) as src:
        for frame in src:
            if not cam.lost:  # nothing overwritten in the driver: the numbers are the camera's
                assert frame.image[0, 0, 0] == frame.index
            got.append((frame.index, clock.t))
            clock.t += consumer_s
    assert cam.released
    return src, cam, got


def test_live_slow_consumer_gets_the_newest_frames_and_counts_the_rest():
    src, cam, got = run_live(0.35)
    assert src.delivered == 20 and 2 <= src.skipped / src.delivered <= 3
    assert src.skipped + src.delivered == got[-1][0] + 1  # every frame made is accounted for
    for index, t in got:
        assert index >= int(t / 0.1 + 1e-9) - 1  # at most one period old


def test_live_skips_count_grabbed_frames_only_a_lower_bound():
    src, cam, got = run_live(0.55, buffer=1)
    assert cam.lost > 0  # the driver dropped frames this side never grabbed: not counted
    assert src.skipped + src.delivered == cam.grabs  # every grabbed frame is accounted for
    assert src.skipped < src.delivered + cam.lost


def test_a_camera_slower_than_it_reports_causes_no_phantom_skips():
    clock = FakeClock()
    cam = FakeCamera(clock, fps=15.0, reported_fps=30.0)  # low light: half the reported rate
    src, _, got = run_live(0.0, camera=cam, clock=clock)
    assert src.skipped == 0 and [i for i, _ in got] == list(range(20))


def test_live_fast_consumer_skips_nothing_and_fps_decimates():
    src, _, got = run_live(0.01)
    assert src.skipped == 0 and [i for i, _ in got] == list(range(20))
    src, _, got = run_live(0.0, fps=10.0)  # --fps at the camera's own rate: nothing to drop
    assert src.skipped == 0 and [i for i, _ in got] == list(range(20))
    clock = FakeClock()
    cam = FakeCamera(clock, fps=30.0)
    with FrameSource(cam, name="cam", shape=(6, 8, 3), live=True, fps=10.0, limit=10,
                     clock=clock, sleep=clock.sleep, cv2=cv2) as src:
        indices = [f.index for f in src]
    assert indices == list(range(0, 30, 3)) and src.skipped == 18


@pytest.mark.slow
def test_cli_source_end_to_end(profiled_bundle, video, tmp_path):
    bundle, _ = profiled_bundle
    out = tmp_path / "run.jsonl"
    r = run_module("edge_runtime", "--bundle", str(bundle), "--source", str(video),
                   "--policy", "device", "--jsonl", str(out))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    rows, summary = lines[:-1], lines[-1]
    assert summary["summary"] and summary["frames_delivered"] == len(rows) == summary["frames"]
    assert summary["frames_skipped"] + summary["frames_delivered"] == N
    assert len({row["frame"] for row in rows}) == len(rows)
    assert "delivered" in r.stderr
