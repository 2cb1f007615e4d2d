"""A saved model's config (facekp.config.DetectorConfig, facekp.model.HourglassConfig): the JSON round
trip, and a specific error for each kind of config this facekp cannot run."""

from __future__ import annotations

import json

import pytest

from facekp import KEYPOINT_NAMES
from facekp.codec import HeatmapCodec
from facekp.config import FORMAT_VERSION, DetectorConfig
from facekp.model import HourglassConfig


def test_json_round_trip_keeps_every_field():
    config = DetectorConfig(
        hourglass=HourglassConfig(num_stacks=1, depth=2, channels=16, heatmap_stride=2),
        sigma=1.5,
        box_to_frame={"detector": "haar_frontalface_default", "scale": 0.41, "offset": [0.0, 0.08]},
    )
    data = json.loads(json.dumps(config.to_dict()))
    assert data["format_version"] == FORMAT_VERSION and data["architecture"] == "stacked_hourglass"
    assert data["keypoint_names"] == list(KEYPOINT_NAMES)
    assert DetectorConfig.from_dict(data) == config


def test_the_codec_follows_the_config():
    config = DetectorConfig(hourglass=HourglassConfig(heatmap_stride=2), sigma=2.0)
    codec = HeatmapCodec.for_config(config)
    assert (codec.input_size, codec.stride, codec.sigma, codec.heatmap_size) == (96, 2, 2.0, 48)


@pytest.mark.parametrize("change, match", [
    ({"format_version": 2}, "format_version 2 is not supported"),
    ({"architecture": "resnet"}, "unknown architecture 'resnet'"),
    ({"normalization": "minmax"}, "unknown normalization 'minmax'"),
    ({"keypoint_names": list(reversed(KEYPOINT_NAMES))}, "differ from facekp's"),
    ({"hourglass": {**HourglassConfig().to_dict(), "num_keypoints": 68}}, "predicts 68 heatmaps, expected 15"),
    ({"hourglass": {**HourglassConfig().to_dict(), "channels": 16.5}}, "channels must be an integer"),
    ({"hourglass": {**HourglassConfig().to_dict(), "heatmap_stride": 3}}, "heatmap_stride must be 1, 2 or 4"),
    ({"hourglass": {**HourglassConfig().to_dict(), "depth": 5}}, "divisible by 2\\*\\*depth"),
    ({"hourglass": {**HourglassConfig().to_dict(), "width": 2}}, "unknown hourglass config keys \\['width'\\]"),
])
def test_configs_this_facekp_cannot_run_are_refused(change, match):
    data = {**DetectorConfig().to_dict(), **change}
    with pytest.raises(ValueError, match=match):
        DetectorConfig.from_dict(data)
