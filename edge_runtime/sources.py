"""Frames from a camera, a video file or a network stream (OpenCV), paced like a real camera.

A board's camera does not wait for the pipeline: when inference is slower than the camera, the
frames produced meanwhile are stale. They are grabbed and dropped (the newest frame is what the
board should work on) and counted in `.skipped`, so a run reports what it did not see.

OpenCV is imported only when a source is opened: `import edge_runtime` never needs it.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from edge_runtime.images import ImageError
from edge_runtime.runner import Frame

URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp")
OPEN_TIMEOUT_MS = 5000  # an unreachable stream fails in seconds, not FFmpeg's default 30 s
MAX_SANE_FPS = 1000.0  # some backends report 90000 (a clock rate) or 0 for "unknown"
_CAMERA = re.compile(r"^(/dev/video(\d+)|\d+)$")


class FrameSource:
    """An iterator of `Frame`s from an open capture; also a context manager.

    `live` sources (cameras, streams) pace themselves: after a slow frame, what the source made
    meanwhile is grabbed and dropped down to the newest frame and counted as skipped (frames the
    capture's own buffer overwrote are never seen, so `skipped` is a lower bound; a source that
    reports no rate is read as it comes). `fps` below a camera's rate drops the extra frames.
    A file is replayed on the injected clock at `fps` (or its own rate): a frame more than one
    period overdue is skipped, so a slow pipeline sees what a camera would have shown it.
    `Frame.index` is the source's frame number: skipped + delivered == last index + 1.
    """

    def __init__(self, capture: Any, *, name: str, shape: tuple[int, int, int], live: bool,
                 fps: float | None = None, limit: int | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, cv2: Any = None) -> None:
        if len(shape) != 3 or shape[2] not in (1, 3):
            raise ImageError(f"Expected a model input (H, W, C) with C 1 or 3. Received: {shape}.")
        if fps is not None and not fps > 0:
            raise ImageError(f"--fps must be > 0. Received: {fps}.")
        if cv2 is None:
            import cv2
        self._cv2, self._cap, self.name, self.live = cv2, capture, name, live
        self._shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        self._fps, self._limit, self._clock, self._sleep = fps, limit, clock, sleep
        rate = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.source_fps: float | None = rate if 0 < rate <= MAX_SANE_FPS else None
        self.skipped = 0  # frames the source produced that the consumer never got
        self.delivered = 0
        self._next = 0  # file: number of the next frame to read
        self._t0: float | None = None  # file replay: when frame 0 was due
        self._last: float | None = None  # live: when the consumer got the previous frame
        self._seen = -1  # live: number of the last frame grabbed
        self._sync: tuple[int, float] | None = None  # live: (number, time) of a new frame
        self._closed = False

    # -------------------------------------------------------------- protocol

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        if self._closed or (self._limit is not None and self.delivered >= self._limit):
            self.close()
            raise StopIteration
        bgr = self._next_live() if self.live else self._next_file()
        if bgr is None:  # the end of a file, or a stream that stopped: just the end
            self.close()
            raise StopIteration
        number = self.skipped + self.delivered  # the source's frame number: none unaccounted
        self.delivered += 1
        self._last = self._clock()
        return Frame(number, self._convert(bgr), None, f"{self.name}#{number}")

    def close(self) -> None:
        """Release the camera or stream now (a camera stays busy until released)."""
        if not self._closed:
            self._closed = True
            self._cap.release()

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- pacing

    def _next_file(self) -> np.ndarray | None:
        rate = self._fps or self.source_fps
        if rate:
            period = 1.0 / rate
            now = self._clock()
            if self._t0 is None:
                self._t0 = now
            # A frame more than one period overdue is one a camera would already have replaced.
            while now - (self._t0 + self._next * period) > period:
                if not self._cap.grab():
                    return None
                self._next += 1
                self.skipped += 1
        ok, bgr = self._cap.read()  # decoded before the wait, which then absorbs its time
        if not ok or bgr is None:
            return None
        if rate:
            wait = self._t0 + self._next * period - self._clock()
            if wait > 0:
                self._sleep(wait)
        self._next += 1
        return bgr

    def _next_live(self) -> np.ndarray | None:
        p = 1.0 / self.source_fps if self.source_fps else (1.0 / self._fps if self._fps else None)
        grabbed = False
        if self._sync is not None and p is not None:
            n0, t0 = self._sync
            newest = n0 + int((self._clock() - t0) / p + 1e-6)
            for _ in range(newest - self._seen):  # drain what was made meanwhile, keep the newest
                waited = self._grab(p)
                if waited is None:
                    return self._ended()
                grabbed = True
                if waited:  # the buffer had run dry (it held fewer): this frame is the newest
                    break
        if self._fps and self._last is not None:  # a camera faster than --fps: drop the extra
            due = self._last + 1.0 / self._fps - 0.5 / max(self._fps, self.source_fps or 0.0)
            while self._clock() < due:
                if self._grab(p) is None:
                    return self._ended()
                grabbed = True
        if not grabbed and self._grab(p) is None:
            return self._ended()
        ok, bgr = self._cap.retrieve()
        if not ok or bgr is None:
            return self._ended()
        self.skipped = self._seen - self.delivered  # frames 0.._seen: delivered or skipped
        return bgr

    def _grab(self, period: float | None) -> bool | None:
        """Grab (not decode) the next frame and count it; True if it had to wait for the
        source, i.e. the frame was just made. None: the end.

        Only frames grabbed here count, so `skipped` is a lower bound: frames the capture's own
        buffer overwrote are not seen. Numbering them by time at the reported rate would count
        phantom frames whenever a camera delivers less than it reports (low light, a
        variable-rate stream), which is worse for a report than missing a few."""
        t = self._clock()
        if not self._cap.grab():
            return None
        now = self._clock()
        if self._sync is None:  # the first frame
            self._seen, self._sync = 0, (0, now)
            return False
        self._seen += 1
        return period is not None and now - t > period / 2

    def _ended(self) -> np.ndarray | None:
        """The end: frames grabbed since the last delivery were skipped. Always None."""
        self.skipped = max(self.skipped, self._seen + 1 - self.delivered)
        return None

    def _convert(self, img: np.ndarray) -> np.ndarray:
        """OpenCV's BGR (or grey, or BGRA) -> float32 RGB/grey 0..255 at the model's H x W."""
        cv2 = self._cv2
        h, w, c = self._shape
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[..., 0]
        if img.ndim == 2:
            img = img if c == 1 else cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        else:
            four = img.shape[2] == 4
            img = cv2.cvtColor(img, (cv2.COLOR_BGRA2GRAY if four else cv2.COLOR_BGR2GRAY) if c == 1
                               else (cv2.COLOR_BGRA2RGB if four else cv2.COLOR_BGR2RGB))
        if img.shape[:2] != (h, w):
            shrink = img.shape[0] > h or img.shape[1] > w
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out = np.asarray(img, dtype=np.float32)
        return out[..., None] if c == 1 else out


def frames_from(source: str, *, shape: tuple[int, int, int], fps: float | None = None,
                limit: int | None = None, clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> FrameSource:
    """Open a video file, an rtsp/http(s) stream URL, or a camera (/dev/videoN or "N").

    Raises `ImageError` with a one-line fix when the source cannot be opened."""
    try:
        import cv2
    except ImportError:
        raise ImageError("--source needs OpenCV: pip install opencv-python-headless") from None
    source = str(source)
    camera = _CAMERA.match(source)
    url = urlsplit(source).scheme.lower() in URL_SCHEMES
    name = display_name(source)
    if camera:
        index = int(camera.group(2) if camera.group(2) is not None else source)
        if camera.group(2) is not None and not Path(source).exists():
            raise ImageError(f"No such camera: {source}. List cameras with: ls /dev/video*")
        cap = cv2.VideoCapture(index, getattr(cv2, "CAP_V4L2", cv2.CAP_ANY))
        if not cap.isOpened():  # not a V4L2 system: let OpenCV pick the backend
            cap = cv2.VideoCapture(index)
    elif url:
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS,
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, OPEN_TIMEOUT_MS]
        cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)
    else:
        if not Path(source).is_file():
            raise ImageError(f"No such video file: {source}. Pass a video file, a stream URL "
                             f"(rtsp://, http://) or a camera (/dev/video0).")
        cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        cap.release()
        what = "camera" if camera else "stream" if url else "video file"
        raise ImageError(f"Cannot open {what} {name}: check that it exists, is reachable and "
                         f"is in a format this OpenCV build reads (cv2.getBuildInformation()).")
    try:
        return FrameSource(cap, name=name, shape=shape, live=bool(camera or url), fps=fps,
                           limit=limit, clock=clock, sleep=sleep, cv2=cv2)
    except BaseException:
        cap.release()
        raise


def display_name(source: str) -> str:
    """The source without a URL's user:password, for messages and frame names."""
    parts = urlsplit(source)
    if parts.scheme.lower() in URL_SCHEMES:
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    return Path(source).name if Path(source).is_file() else source
