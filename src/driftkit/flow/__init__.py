"""Continuous flow-matching maths shared by every flow-based decoder.

Time convention, used everywhere in driftkit: t = 0 is the source (noise), t = 1 is data.
    x_t = (1 - t) * x_0 + t * x_1,     u_t = x_1 - x_0,     integrate dx/dt = v(x, t) from t = 0 to t = 1.
pi0 and SmolVLA write the same path with t flipped (t = 1 is noise); their time sampler is mirrored here.
"""

from driftkit.flow.guidance import PrefixGuide, guidance_weight, guided_euler
from driftkit.flow.path import PREDICTIONS, as_velocity, flow_matching_loss, interpolate, target_velocity
from driftkit.flow.solver import euler
from driftkit.flow.time import TIME_SAMPLERS, sample_time

__all__ = [
    "PREDICTIONS", "TIME_SAMPLERS", "PrefixGuide", "as_velocity", "euler", "flow_matching_loss", "guidance_weight",
    "guided_euler", "interpolate", "sample_time", "target_velocity",
]
