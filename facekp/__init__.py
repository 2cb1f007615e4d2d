"""facekp: 15 facial keypoints with a stacked hourglass network, on CPU or CUDA.

>>> from facekp import Detector
>>> points = Detector().predict("face.jpg")   # (15, 2) float32, (x, y) in image pixels
"""

from .detector import Detector
from .draw import draw
from .errors import ChecksumError, DeviceError, FacekpError, InvalidImageError, WeightsError
from .faces import BoxCalibration, Face, HaarFaceDetector
from .keypoints import KEYPOINT_NAMES

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
