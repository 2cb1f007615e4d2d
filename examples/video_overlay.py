"""Keypoints on a webcam or video, tracked and smoothed, drawn over each frame.

    python examples/video_overlay.py [--source 0|VIDEO] [--output overlay.mp4] [--max-frames N]
                                     [--detect-every 5] [--weights W] [--face-detector haar] [--device cpu]

With a display (and a GUI build of OpenCV), shows the overlay in a window: q or Esc quits.
Without one (a server, a container, opencv-python-headless), or with --output, writes the
overlay to a video file instead (default overlay.mp4). Without --source, makes a short demo clip
from facekp's sample portrait, in a temporary folder removed at the end: the face drifts across
the frame and shakes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from facekp import Detector, draw
from facekp.data import sample_photo
from facekp.video import VideoWriter, has_display, track_video, video_fps


def make_demo_clip(path: Path, frames: int = 60, size: tuple[int, int] = (320, 240), fps: float = 15.0) -> Path:
    """A clip of the sample portrait drifting and shaking over a plain background."""
    photo = sample_photo()
    w, h = size
    scale = 0.6 * h / photo.shape[0]
    small = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    with VideoWriter(path, fps=fps, overwrite=True) as out:
        for i in range(frames):
            canvas = np.full((h, w, 3), (90, 110, 130), np.uint8)
            drift = (w - small.shape[1]) * (0.5 + 0.35 * np.sin(2 * np.pi * i / frames))
            x = int(round(drift + rng.normal(0, 1.5)))
            y = int(round((h - small.shape[0]) / 2 + rng.normal(0, 1.5)))
            x, y = np.clip(x, 0, w - small.shape[1]), np.clip(y, 0, h - small.shape[0])
            canvas[y : y + small.shape[0], x : x + small.shape[1]] = small
            out.write(canvas)
    return path


def overlay(image: np.ndarray, faces) -> np.ndarray:
    canvas = draw(image, faces)
    for face in faces:
        x0, y0 = int(face.box[0]), int(face.box[1])
        cv2.putText(canvas, f"#{face.track_id}", (x0, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (255, 255, 0), 1, cv2.LINE_AA)
    return canvas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", help="camera index (0, 1, ...) or video file (default: a demo clip)")
    parser.add_argument("--output", type=Path, help="write the overlay to this video (.mp4 or .avi)")
    parser.add_argument("--max-frames", type=int, help="stop after this many frames")
    parser.add_argument("--detect-every", type=int, default=5, help="run the face detector every N frames")
    parser.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--weights", help="model (default: the bundled one)")
    parser.add_argument("--face-detector", choices=("facekp", "haar"), default="facekp",
                        help="facekp's own face finder (any rotation) or OpenCV's Haar cascade (default: facekp)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    if args.source is not None:
        return overlay_video(args.source, args, parser)
    with tempfile.TemporaryDirectory(prefix="facekp_demo_") as folder:
        print("no --source: using a demo clip of the sample portrait")
        return overlay_video(str(make_demo_clip(Path(folder) / "demo.avi")), args, parser)


def overlay_video(source: str, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Track the faces of ``source`` (a camera index or a video file) and show or write the overlay."""
    show = args.output is None and has_display()
    output = None if show else (args.output or Path("overlay.mp4"))
    if output is not None and not source.isdigit() and output.resolve() == Path(source).resolve():
        parser.error("the output would replace the input video")
    if output is not None and output.exists() and not args.force:
        parser.error(f"{output} exists (pass --force to replace it)")

    detector = Detector(args.weights, device=args.device)
    fps = 30.0 if source.isdigit() else video_fps(source)
    writer = VideoWriter(output, fps=fps, overwrite=args.force) if output is not None else None
    n = 0
    try:
        for frame in track_video(source, detector, max_frames=args.max_frames, detect_every=args.detect_every,
                                 face_detector=args.face_detector):
            canvas = overlay(frame.image, frame.faces)
            n += 1
            if writer is not None:
                writer.write(canvas)
            else:
                cv2.imshow("facekp", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
    finally:
        if writer is not None:
            writer.close()
        if show:
            cv2.destroyAllWindows()
    print(f"{n} frame(s)" + (f"; wrote {output}" if writer is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
