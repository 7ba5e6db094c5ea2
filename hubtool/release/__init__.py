"""`hubtool release`: plan the stage graph, run its stages (here, or as separate jobs sharing a cache), publish."""

from hubtool.release.config import ReleaseConfig, build_config, load_yaml
from hubtool.release.graph import Inputs, Stage, check_inputs
from hubtool.release.plan import Plan, make_plan
from hubtool.release.run import publish, run_release, run_stages

__all__ = ["Inputs", "Plan", "ReleaseConfig", "Stage", "build_config", "check_inputs", "load_yaml", "make_plan", "publish", "run_release",
           "run_stages"]
