"""`hubtool release`: plan, then merge -> quantize -> verify -> cards -> push, cached by content hash."""

from hubtool.release.config import ReleaseConfig, build_config, load_yaml
from hubtool.release.plan import Plan, make_plan
from hubtool.release.stages import Inputs, check_inputs, run_release

__all__ = ["Inputs", "Plan", "ReleaseConfig", "build_config", "check_inputs", "load_yaml", "make_plan", "run_release"]
