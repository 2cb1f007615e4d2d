"""facekp: 15 facial keypoints with a stacked hourglass network, on CPU or CUDA.

>>> from facekp import Detector
>>> points = Detector().predict("examples/face_crop.jpg")   # (15, 2) float32, (x, y) in image pixels
"""

from .detector import Detector
from .calibration import BoxCalibration
from .draw import draw
from .errors import ChecksumError, DeviceError, FacekpError, InvalidImageError, WeightsError
from .face_detection import HaarFaceDetector
from .keypoints import KEYPOINT_NAMES
from .results import Face

__version__ = "0.1.0"

__all__ = [
    "Detector",
    "Face",
    "HaarFaceDetector",
    "BoxCalibration",
    "draw",
    "KEYPOINT_NAMES",
    "FacekpError",
    "InvalidImageError",
    "WeightsError",
    "ChecksumError",
    "DeviceError",
    "__version__",
]
