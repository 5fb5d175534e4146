"""rsagent: text-guided segmentation by a multi-turn, tool-using agent.

    from rsagent import load_image, make_segmenter, OraclePolicy, EpisodeTask, run_episode
"""

from rsagent.api import SegmentResult, segment_image
from rsagent.core.errors import ImageError, MaskError, ModelLoadError, RsagentError
from rsagent.core.image import load_image, load_mask, save_mask
from rsagent.core.mask import GroundTruth, decode_rle, encode_rle, intersection_union, iou
from rsagent.core.trajectory import Trajectory
from rsagent.core.view import View
from rsagent.env.episode import Episode, EpisodeConfig, EpisodeTask
from rsagent.policies.base import Policy
from rsagent.policies.oracle import OracleConfig, OraclePolicy
from rsagent.runner import run_episode, run_episodes
from rsagent.segmenters import Segmenter, make_segmenter

__version__ = "0.1.0"

__all__ = [
    "Episode", "EpisodeConfig", "EpisodeTask", "GroundTruth", "ImageError", "MaskError", "ModelLoadError",
    "OracleConfig", "OraclePolicy", "Policy", "RsagentError", "SegmentResult", "Segmenter", "Trajectory",
    "View", "decode_rle", "encode_rle", "intersection_union", "iou", "load_image", "load_mask",
    "make_segmenter", "run_episode", "run_episodes", "save_mask", "segment_image",
]
