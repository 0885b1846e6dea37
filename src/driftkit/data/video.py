"""mp4 video files through PyAV: frames [N, H, W, 3] uint8 in, the same frames (up to codec loss) out.

Frame i of a file has presentation time i / fps, so an episode that starts at `from_timestamp` in a file
starts at frame round(from_timestamp * fps).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from driftkit.data.format import DatasetFormatError


class VideoWriter:
    """Appends RGB frames to one mp4 file (H.264, yuv420p by default)."""

    def __init__(self, path: Path, fps: int, height: int, width: int, codec: str = "libx264", crf: int = 10):
        import av

        if height % 2 or width % 2:
            raise ValueError(f"got video size {height}x{width}; yuv420p needs even height and width")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._container = av.open(str(path), mode="w")
        self._stream = self._container.add_stream(codec, rate=Fraction(int(fps), 1))
        self._stream.height, self._stream.width = height, width
        self._stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            # Small crf keeps 64x64 training images close to the originals; the files stay tiny anyway.
            self._stream.options = {"crf": str(crf), "g": "2", "bf": "0"}
        self.frames_written = 0

    def write(self, frames: np.ndarray) -> None:  # frames [N, H, W, 3] uint8
        import av

        for frame in np.asarray(frames, dtype=np.uint8):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            self._container.mux(self._stream.encode(vf))
            self.frames_written += 1

    def close(self) -> None:
        self._container.mux(self._stream.encode(None))
        self._container.close()


def read_video(path: Path, fps: float) -> np.ndarray:
    """All frames of an mp4 in presentation order -> [N, H, W, 3] uint8, frame n at time n / fps."""
    import av

    if not Path(path).is_file():
        raise DatasetFormatError(f"missing video file {path}")
    try:
        with av.open(str(path)) as container:
            frames = []
            for frame in container.decode(video=0):
                t = float(frame.pts * frame.time_base) if frame.pts is not None else len(frames) / fps
                frames.append((t, frame.to_ndarray(format="rgb24")))
    except av.error.FFmpegError as err:
        raise DatasetFormatError(f"cannot decode video file {path}: {err}") from err
    if not frames:
        raise DatasetFormatError(f"video file {path} holds no frames")
    frames.sort(key=lambda f: f[0])
    return np.stack([f for _, f in frames])
