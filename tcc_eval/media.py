"""Opening video files, shared by every reader (the Python API's, the compressor labeller's, VILA's processor):
decord's own error for a file it cannot open is a bare RuntimeError that names no fix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def open_video(path: str | os.PathLike) -> Any:
    """A ``decord.VideoReader`` of ``path``, or an error naming the file and the fix."""
    import decord

    if not Path(path).is_file():
        raise FileNotFoundError(f"video {str(path)!r} does not exist: pass the path of a video file")
    try:
        reader = decord.VideoReader(str(path))
    except Exception as err:  # decord raises a bare RuntimeError for anything it cannot open
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot decode video {str(path)!r} with decord ({reason}): re-encode it (e.g. ffmpeg -i "
                         f"in.mov -c:v libx264 out.mp4) or pass its frames as images") from None
    if len(reader) == 0:
        raise ValueError(f"video {str(path)!r} has no frames")
    return reader
