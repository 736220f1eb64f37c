"""``pose_node`` with a stand-in pipeline that computes for a second per set (for the SIGINT test).

Run as a script with the repository root on PYTHONPATH; prints ``estimate started`` and
``estimate finished`` around each set's computation.
"""
from __future__ import annotations

import sys
import time

import torch

from pose_node.pipeline import PosePipeline

COMPUTE_S = 1.0


class SlowPipeline:
    build_s = 0.0

    def estimate(self, views):
        print("estimate started", flush=True)
        started = time.monotonic()
        x = torch.rand(256, 256)
        while time.monotonic() - started < COMPUTE_S:  # torch busy in this thread, as the real pipeline is
            x = x @ x
            x = x / x.norm()
        print("estimate finished", flush=True)
        return [], {"total": COMPUTE_S * 1e3}

    def set_thresholds(self, thresholds):
        pass

    def pop_unit_reports(self):
        return []

    def reset(self):
        pass


if __name__ == "__main__":
    PosePipeline.from_node_config = classmethod(lambda cls, config, models: SlowPipeline())
    from pose_node.ros.node import main

    sys.exit(main())
